// app-firewall.js -- fs firewall for every node process in the pimagic sandbox.
//
// Usage: NODE_OPTIONS=--require=/usr/local/lib/pimagic/app-firewall.js (set in the image).
//
// Wraps the node:fs entry points that open, copy or move files (sync, callback,
// promises, streams) and refuses protected paths -- the same list as fs-vault.c:
//   /run/pimagic/**, /run/secrets/**, /proc/<other pid>/{environ,mem},
//   auth.json under a .pi directory or $PI_CODING_AGENT_DIR, .env and .env.* (not .env.example).
// The secret stores and /proc are refused to everybody. The credential files are
// allowed only to pi itself, judged from the call stack (util.getCallSites, which
// Error.prepareStackTrace cannot fake):
//   - this process was started as pi (its main script is pi's dist/cli.js), main thread;
//   - some frame is pi's code (the global install of @earendil-works/pi-coding-agent,
//     which holds its @earendil-works dependencies) ...
//   - ... no frame is pi's tool code (dist/core/tools/, dist/bundle/ which inlines it) ...
//   - ... and no frame is code from anywhere else ([eval], scripts, extensions).
// A refusal throws (or passes to the callback / rejects / errors the stream) an Error
// with code EACCES whose message starts with "[SYSTEM BLOCK: node-fs]"
// (fs-vault.c says "libc-fs": the marker names the firewall that refused).
//
// `node --expose-internals` is refused outright (internalBinding would skip the wrappers).
// A speed bump: a node process started without NODE_OPTIONS skips this file (fs-vault
// then refuses credential files to it), but native addons, WASI and vm code with forged
// file names inside pi (extensions) are not covered.
'use strict';

const fs = require('node:fs');
const path = require('node:path');
const util = require('node:util');
const { isMainThread } = require('node:worker_threads');
const { syncBuiltinESMExports } = require('node:module');
const { Readable, Writable } = require('node:stream');

const PI_ROOT = '/usr/local/lib/node_modules/@earendil-works/pi-coding-agent';
const PI_MAIN = PI_ROOT + '/dist/cli.js';
const UNTRUSTED_PI_DIRS = [PI_ROOT + '/dist/core/tools/', PI_ROOT + '/dist/bundle/'];
const SELF = __filename;
const AGENT_DIR = canonical(process.env.PI_CODING_AGENT_DIR || '/home/pi/.pi/agent');

const realpath = fs.realpathSync.native;
const getCallSites = util.getCallSites;
const processBinding = process.binding;

// internalBinding('fs') would skip every wrapper below, and fs-vault trusts this process.
if (process.execArgv.some((a) => /^--expose[-_]internals\b/.test(a))) {
  process.stderr.write('[SYSTEM BLOCK: node-fs] node --expose-internals is disabled in this sandbox\n');
  process.exit(126);
}

// Decided once, before any user code runs.
const PI_PROCESS = isMainThread && mainScript() === PI_MAIN;

function mainScript() {
  const argv1 = process.argv[1];
  if (!argv1) return null;
  try {
    return fs.realpathSync.native(path.resolve(argv1));
  } catch {
    return null;
  }
}

function canonical(p) {
  const abs = path.resolve(p);
  try {
    return fs.realpathSync.native(abs);
  } catch {
    try {
      return path.join(fs.realpathSync.native(path.dirname(abs)), path.basename(abs));
    } catch {
      return abs;
    }
  }
}

function under(p, dir) {
  return p === dir || p.startsWith(dir.endsWith('/') ? dir : dir + '/');
}

function toPathString(p) {
  if (typeof p === 'string') return p;
  if (Buffer.isBuffer(p)) return p.toString();
  if (p instanceof URL && p.protocol === 'file:') return require('node:url').fileURLToPath(p);
  return null; // fds and anything else: nothing to judge
}

// 'secret' (nobody), 'credential' (pi only), or null.
function classify(abs) {
  if (under(abs, '/run/pimagic') || under(abs, '/run/secrets')) return 'secret';
  const m = /^\/proc\/(\d+)\/(?:task\/\d+\/)?(?:environ|mem)$/.exec(abs);
  if (m && Number(m[1]) !== process.pid) return 'secret';
  const base = path.basename(abs);
  if (base === '.env' || (base.startsWith('.env.') && base !== '.env.example')) return 'credential';
  if (base === 'auth.json' && (abs.includes('/.pi/') || under(abs, AGENT_DIR))) return 'credential';
  return null;
}

function frameFile(site) {
  let name = site.scriptName || '';
  if (name.startsWith('file://')) {
    try {
      name = require('node:url').fileURLToPath(name);
    } catch {
      return name;
    }
  }
  return name;
}

function calledByPi() {
  if (!PI_PROCESS || typeof getCallSites !== 'function') return false;
  let sawPi = false;
  for (const site of getCallSites(200)) {
    const file = frameFile(site);
    if (!file || file === SELF || file.startsWith('node:')) continue;
    if (!under(file, PI_ROOT)) return false; // [eval], scripts, extensions, vm code
    if (UNTRUSTED_PI_DIRS.some((dir) => file.startsWith(dir))) return false; // pi's tools
    sawPi = true;
  }
  return sawPi;
}

// null when allowed, else the Error to report.
function refusal(p, syscall) {
  const str = toPathString(p);
  if (str === null || str === '') return null;
  const abs = canonical(str);
  const kind = classify(abs);
  if (kind === null) return null;
  if (kind === 'credential' && calledByPi()) return null;
  const err = new Error(`[SYSTEM BLOCK: node-fs] ${syscall} '${abs}': access to protected files is denied in this sandbox`);
  err.code = 'EACCES';
  err.errno = -13;
  err.syscall = syscall;
  err.path = abs;
  return err;
}

function copyProps(from, to) {
  for (const key of Reflect.ownKeys(from)) {
    if (key === 'length' || key === 'name' || key === 'prototype') continue;
    try {
      Object.defineProperty(to, key, Object.getOwnPropertyDescriptor(from, key));
    } catch {
      // non-configurable: keep ours
    }
  }
}

// kind: 'sync' throws, 'callback' calls the last-argument callback, 'promise' rejects,
// 'read-stream' / 'write-stream' return a stream that errors.
function wrap(obj, name, kind, pathArgs = [0]) {
  const orig = obj && obj[name];
  if (typeof orig !== 'function') return;
  const wrapped = {
    [name](...args) {
      for (const i of pathArgs) {
        const err = refusal(args[i], name);
        if (!err) continue;
        switch (kind) {
          case 'sync':
            throw err;
          case 'callback': {
            const cb = args[args.length - 1];
            if (typeof cb !== 'function') throw err;
            process.nextTick(cb, err);
            return undefined;
          }
          case 'promise':
            return Promise.reject(err);
          case 'read-stream': {
            const s = new Readable({ read() {} });
            process.nextTick(() => s.destroy(err));
            return s;
          }
          case 'write-stream': {
            const s = new Writable({ write(_c, _e, cb) { cb(err); } });
            process.nextTick(() => s.destroy(err));
            return s;
          }
          default:
            throw err;
        }
      }
      return Reflect.apply(orig, this, args);
    },
  }[name];
  copyProps(orig, wrapped);
  obj[name] = wrapped;
}

const ONE = [0];
const TWO = [0, 1];
const table = [
  ['open', ONE], ['readFile', ONE], ['writeFile', ONE], ['appendFile', ONE], ['truncate', ONE],
  ['copyFile', TWO], ['cp', TWO], ['rename', TWO], ['link', TWO],
];
for (const [name, args] of table) {
  wrap(fs, name, 'callback', args);
  wrap(fs, name + 'Sync', 'sync', args);
  wrap(fs.promises, name, 'promise', args);
}
wrap(fs, 'openAsBlob', 'promise');
wrap(fs, 'createReadStream', 'read-stream');
wrap(fs, 'createWriteStream', 'write-stream');

// The raw binding would skip every wrapper above.
process.binding = function binding(name) {
  if (name === 'fs' || name === 'fs_dir') {
    const err = new Error(`[SYSTEM BLOCK: node-fs] process.binding('${name}') is disabled in this sandbox`);
    err.code = 'EACCES';
    throw err;
  }
  return Reflect.apply(processBinding, process, arguments);
};

syncBuiltinESMExports();
