"""app-firewall.js (NODE_OPTIONS=--require): the fs firewall inside every node process, which lets
pi (and only pi's own code) read auth.json. Its refusal starts with "[SYSTEM BLOCK: node-fs]".
The control is the same sandbox started with NODE_OPTIONS emptied: node is then an ordinary
process to fs-vault, which refuses in its own words ("libc-fs", as EACCES without node-fs's
message), so the outcome differs in which layer refused; with neither layer the read succeeds."""

from __future__ import annotations

import json
import textwrap

import pytest
from secharness import (
    AGENT_DIR,
    APP_FIREWALL,
    CANARY_AUTH,
    FS_VAULT,
    LIB,
    LIBC_FS,
    NODE_FS,
    Result,
    assert_allowed,
    assert_stopped,
    marker,
)

AUTH = f"{AGENT_DIR}/auth.json"
READ_AUTH = f"node -e 'console.log(require(\"fs\").readFileSync(\"{AUTH}\",\"utf8\"))'"

EVERY_API = f"""
const fs = require('fs');
const p = '{AUTH}';
const results = [];
const tryIt = (name, f) => {{ try {{ f(); results.push(name + ':read'); }}
    catch (e) {{ results.push(name + ':' + e.code + ':' + e.message.startsWith('{NODE_FS}')); }} }};
tryIt('readFileSync', () => fs.readFileSync(p));
tryIt('openSync', () => fs.openSync(p, 'r'));
tryIt('copyFileSync', () => fs.copyFileSync(p, '/tmp/copy'));
fs.promises.readFile(p).then(() => 'read', (e) => e.code + ':' + e.message.startsWith('{NODE_FS}'))
  .then((r) => {{ results.push('promises:' + r); return new Promise((res) => {{
    fs.createReadStream(p).on('data', () => res('stream:read'))
      .on('error', (e) => res('stream:' + e.code + ':' + e.message.startsWith('{NODE_FS}'))); }}); }})
  .then((r) => {{ results.push(r); console.log(JSON.stringify(results)); }});
"""


def node(box, code: str, env: str = "") -> Result:
    return box.sh(f"{env} node - <<'JS'\n{textwrap.dedent(code)}\nJS")


@pytest.fixture(scope="module")
def no_firewall(control):
    return control(APP_FIREWALL)


@pytest.fixture(scope="module")
def neither(control):
    return control(APP_FIREWALL, FS_VAULT)


def test_every_fs_api_refuses_auth_json(box, no_firewall, neither):
    """sync, callback-less promise and stream APIs: each refused with node-fs's message; without
    the firewall fs-vault refuses (EACCES, no node-fs message); without both, node reads it."""
    attack, control = node(box, EVERY_API), node(no_firewall, EVERY_API)
    everywhere = ["readFileSync", "openSync", "copyFileSync", "promises", "stream"]
    assert_stopped(APP_FIREWALL, attack,
                   lambda r: json.loads(r.out) == [f"{api}:EACCES:true" for api in everywhere],
                   control=control, then=lambda r: json.loads(r.out) == [f"{api}:EACCES:false" for api in everywhere])
    assert LIBC_FS in control.err
    unguarded = json.loads(node(neither, EVERY_API).out)
    assert unguarded[:2] == ["readFileSync:read", "openSync:read"], unguarded


def test_node_reads_of_auth_json(box, no_firewall, neither):
    """auth-json-node: the plain read, as an agent's script would."""
    attack = box.sh(READ_AUTH)
    assert_stopped(APP_FIREWALL, attack, marker(NODE_FS), control=no_firewall.sh(READ_AUTH),
                   then=marker(LIBC_FS))
    assert LIBC_FS not in attack.err  # the Node firewall refused before libc was asked
    assert CANARY_AUTH in neither.sh(READ_AUTH).out  # the attack is real without both


def test_node_options_with_an_undo_script(box, no_firewall):
    """node-options-undo: load the firewall, then a script that tries to take fs back."""
    script = (
        "echo 'const fs=require(\"fs\"); delete require.cache; "
        f"try {{ console.log(fs.readFileSync(\"{AUTH}\",\"utf8\")) }} catch(e) {{ console.error(e.message) }}"
        "' > /tmp/undo.js && "
        f"NODE_OPTIONS='--require={LIB}/app-firewall.js --require=/tmp/undo.js' node -e 0"
    )
    without = no_firewall.sh(script.replace(f"--require={LIB}/app-firewall.js ", ""))
    assert_stopped(APP_FIREWALL, box.sh(script), lambda r: NODE_FS in r.err, control=without,
                   then=lambda r: LIBC_FS in r.err)


@pytest.mark.parametrize(
    "script",
    [
        pytest.param("node --expose-internals -e 'console.log(\"ran\")'", id="expose-internals"),
        pytest.param("node -e 'process.binding(\"fs\"); console.log(\"ran\")'", id="process-binding-fs"),
    ],
)
def test_node_internals_are_refused(box, no_firewall, script):
    """internalBinding('fs') and the raw binding would skip every wrapper."""
    assert_stopped(APP_FIREWALL, box.sh(script), lambda r: r.code != 0 and "ran" not in r.out and NODE_FS in r.err,
                   control=no_firewall.sh(script), then=lambda r: "ran" in r.out)


def test_twin_node_reads_ordinary_files(box):
    res = node(box, f"""
        const fs = require('fs');
        console.log(fs.readFileSync('/workspace/README.md', 'utf8').trim());
        console.log(fs.readdirSync('{AGENT_DIR}').includes('auth.json'));
        """)
    assert_allowed(res, APP_FIREWALL, res.out.split("\n")[:2] == ["hello", "true"])


def test_twin_pi_reads_its_own_credentials(box):
    """pi (and only pi) may read auth.json: the canary key makes anthropic models available."""
    res = box.sh("pi --list-models anthropic 2>&1")
    assert_allowed(res, APP_FIREWALL, res.code == 0 and "claude" in res.out.lower() and "SYSTEM BLOCK" not in res.out)


def test_pi_without_the_node_firewall_is_refused_by_fs_vault(no_firewall):
    """The control's pi: fs-vault trusts node only with the firewall loaded, so pi itself loses its
    key there (no anthropic model). The firewall is what lets pi, and only pi, through."""
    res = no_firewall.sh("pi --list-models anthropic 2>&1")
    assert "claude" not in res.out.lower(), res


def test_twin_pi_rpc_mode_answers(box):
    res = box.sh('printf \'%s\\n\' \'{"id":"1","type":"get_state"}\' | timeout 30 pi --mode rpc --no-session')
    first = json.loads(next(line for line in res.out.splitlines() if line.startswith("{")))
    assert_allowed(res, APP_FIREWALL, first.get("type") == "response" and first.get("success") is True)

