// pi-warm.js -- loads, in the background, the provider code pi loads on its first prompt.
//
// Usage: NODE_OPTIONS=--require=.../app-firewall.js --require=.../pi-warm.js (set in the image).
//
// pi imports a model API's module (pi-ai's dist/api/<api>.js and its SDK, e.g. `openai`) lazily,
// on the first prompt: 0.1-0.15 s between the prompt and the request reaching the model server
// (5 ms on later prompts). pimagic starts pi in the background at %load_ext, so this preload does
// that import once pi's own start-up is done (its event loop idle), and the first prompt finds the
// module loaded (ES modules are cached by URL: pi's `import()` gets this one, or joins it while
// in flight). Measured in the image: 0.13-0.17 s -> 0.03-0.04 s from prompt to request.
//
// Only in pi's RPC process (main thread, main script pi's dist/cli.js, `--mode rpc`). It sends
// nothing anywhere and reads only pi's root-owned install and the host-owned settings.json and
// models.json (defaultProvider/defaultModel and its `api`). A name read from those files only
// picks one of pi-ai's own lazily loaded API modules: it must match a plain name and
// dist/api/<name>.lazy.js must exist, so no value can make this load anything else.
// A failure is silent: pi then loads the module on the first prompt as it always did.
// PIMAGIC_WARM_TRACE=1 (tests) writes one line to stderr: "pi-warm: loaded <api>" or "pi-warm: nothing to load".
'use strict';

const fs = require('node:fs');
const path = require('node:path');
const { pathToFileURL } = require('node:url');
const net = require('node:net');
const { isMainThread } = require('node:worker_threads');
const { performance } = require('node:perf_hooks');

const PI_ROOT = '/usr/local/lib/node_modules/@earendil-works/pi-coding-agent';
const PI_MAIN = PI_ROOT + '/dist/cli.js';
const PI_AI = PI_ROOT + '/node_modules/@earendil-works/pi-ai/dist';
const NAME = /^[a-z0-9][a-z0-9._-]{0,63}$/;
const POLL_MS = 100;
const IDLE = 0.2; // event-loop utilisation under which pi's start-up is over (it waits for input)
const GIVE_UP_MS = 60000;
const MAX_JSON = 1 << 20;

function isPiRpc() {
  if (!isMainThread) return false;
  const argv = process.argv;
  const i = argv.indexOf('--mode');
  if (i < 0 || argv[i + 1] !== 'rpc') return false;
  try {
    return fs.realpathSync.native(path.resolve(argv[1] || '')) === PI_MAIN;
  } catch {
    return false;
  }
}

function readJson(file) {
  try {
    const st = fs.statSync(file);
    if (!st.isFile() || st.size > MAX_JSON) return null;
    const value = JSON.parse(fs.readFileSync(file, 'utf8'));
    return value && typeof value === 'object' ? value : null;
  } catch {
    return null;
  }
}

function str(v) {
  return typeof v === 'string' && NAME.test(v) ? v : null;
}

// The API of pi's default model: models.json (a provider pimagic configured: a local server, the
// scripted model) first, then pi-ai's catalogue (providers/data/<provider>.json: { api: { "chat:<id>": ... } }).
function defaultApi(agentDir) {
  const settings = readJson(path.join(agentDir, 'settings.json')) || {};
  const provider = str(settings.defaultProvider);
  const model = typeof settings.defaultModel === 'string' ? settings.defaultModel : null;
  if (!provider) return null;
  const models = readJson(path.join(agentDir, 'models.json')) || {};
  const custom = models.providers && Object.hasOwn(models.providers, provider) ? models.providers[provider] : null;
  if (custom && typeof custom === 'object') {
    const entry = Array.isArray(custom.models) ? custom.models.find((m) => m && m.id === model) : null;
    return str(entry && entry.api) || str(custom.api);
  }
  const catalogue = readJson(path.join(PI_AI, 'providers', 'data', provider + '.json')) || {};
  for (const [api, byId] of Object.entries(catalogue)) {
    if (byId && typeof byId === 'object' && model !== null && Object.hasOwn(byId, 'chat:' + model)) return str(api);
  }
  return null;
}

function trace(message) {
  if (process.env.PIMAGIC_WARM_TRACE === '1') process.stderr.write(`pi-warm: ${message}\n`);
}

function warm() {
  // The first connection's own first-use costs: node compiles its IPv6 pattern on the first
  // isIPv6() (undici asks it of the model server's host name).
  net.isIPv6('::1');
  const api = defaultApi(process.env.PI_CODING_AGENT_DIR || path.join(process.env.HOME || '/home/pi', '.pi/agent'));
  if (!api || !fs.existsSync(path.join(PI_AI, 'api', api + '.lazy.js'))) {
    trace('nothing to load');
    return;
  }
  import(pathToFileURL(path.join(PI_AI, 'api', api + '.js')).href).then(
    () => trace(`loaded ${api}`),
    () => trace(`could not load ${api}`),
  );
}

// Once pi has started (its module graph evaluated, so this import does not run pi's own modules
// in another order than pi would): start-up keeps the event loop busy loading modules; a loop idle
// for a whole poll interval means pi is waiting for commands. A heuristic, hence the give-up bound.
function whenIdle(fn) {
  const started = Date.now();
  let last = performance.eventLoopUtilization();
  const timer = setInterval(() => {
    const now = performance.eventLoopUtilization();
    const busy = performance.eventLoopUtilization(now, last).utilization;
    last = now;
    if (busy < IDLE || Date.now() - started > GIVE_UP_MS) {
      clearInterval(timer);
      fn();
    }
  }, POLL_MS);
  timer.unref();
}

if (isPiRpc()) {
  whenIdle(() => {
    try {
      warm();
    } catch {
      // pi loads the module itself on the first prompt
    }
  });
}
