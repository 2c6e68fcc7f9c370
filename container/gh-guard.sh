#!/usr/bin/env bash
# gh-guard.sh -- decide whether a gh command line may run with the GitHub token.
#
# Usage:
#   gh-guard.sh --check ARGS...   exit 0 when `gh ARGS...` is allowed; exit 126 with an
#                                 ERROR: line on stderr naming the blocked command if not
#   gh-guard.sh ARGS...           check, then exec /usr/local/lib/pimagic/gh-real ARGS...
#                                 (for use without the vault)
#
# The vault (gh-vault) runs `--check` unprivileged, with no token in the environment, and
# PIMAGIC_PARANOID taken from /run/pimagic/policy. Anything but PIMAGIC_PARANOID=0 counts
# as paranoid.
#
# Always blocked (they print the token or run agent-controlled code with it):
#   gh auth token, gh auth git-credential, gh auth status -t/--show-token,
#   gh extension/extensions/ext, gh alias
# Blocked when paranoid (account-level changes such as planting a key):
#   gh auth, repo, secret, ssh-key, gpg-key, config, and `gh api` requests that write
#   (-X/--method other than GET, -f/-F/--field/--raw-field/--input); and the commands that
#   run git or ssh as children holding the token: pr checkout|co|create|new|merge,
#   gist clone|edit, codespace.
# `gh help ...`, `gh --help` and `gh --version` only print text and always pass.
#
# Finding the subcommand: flags may come before it (`gh -R o/r repo list`) and whether a
# flag takes a value is not known here, so the command line is read three ways (every
# flag takes a value / none does / all but --help, -h, --version do) and any reading
# that names a blocked command blocks.
set -euo pipefail

GH_REAL=/usr/local/lib/pimagic/gh-real
EXIT_BLOCKED=126

CMD=""
SUB=""

block() {
  echo "ERROR: gh-guard: '$1' is blocked in this sandbox: $2" >&2
  exit "$EXIT_BLOCKED"
}

# scan MODE ARGS... -- sets CMD and SUB to the first two positional words.
scan() {
  local mode=$1 a
  shift
  local -a pos=()
  local rest=0 skip=0
  for a in "$@"; do
    if ((skip)); then skip=0; continue; fi
    if ((rest)); then pos+=("$a"); else
      case $a in
        --) [[ $mode == none ]] || rest=1 ;;
        --*=*) ;;
        --*) if [[ $mode == all || ($mode == bools && $a != --help && $a != --version) ]]; then skip=1; fi ;;
        -?) if [[ $mode == all || ($mode == bools && $a != -h) ]]; then skip=1; fi ;;
        -*) ;;
        *) pos+=("$a") ;;
      esac
    fi
    ((${#pos[@]} >= 2)) && break
  done
  CMD=${pos[0]:-}
  SUB=${pos[1]:-}
}

shows_token() {
  local a
  for a in "$@"; do
    case $a in
      -t | --show-token | --show-token=*) return 0 ;;
      --*) ;;
      -*t*) return 0 ;;
    esac
  done
  return 1
}

api_writes() {
  local a prev=""
  for a in "$@"; do
    case $prev in
      -X | --method) [[ ${a^^} == GET ]] || return 0 ;;
    esac
    case $a in
      -X | --method) ;;
      -XGET | -Xget | --method=GET | --method=get) ;;
      -X* | --method=*) return 0 ;;
      -f* | -F* | --field | --field=* | --raw-field | --raw-field=* | --input | --input=*) return 0 ;;
      --*) ;;
      -*[fFX]*) return 0 ;;
    esac
    prev=$a
  done
  return 1
}

paranoid() {
  [[ ${PIMAGIC_PARANOID:-1} != 0 ]]
}

verdict() {
  local cmd=$1 sub=$2
  shift 2
  case $cmd in
    extension | extensions | ext) block "gh $cmd" "extensions run arbitrary code with the token" ;;
    alias) block "gh alias" "aliases can run arbitrary commands with the token" ;;
    auth)
      case $sub in
        token) block "gh auth token" "it prints the token" ;;
        git-credential) block "gh auth git-credential" "it prints the token" ;;
        status) if shows_token "$@"; then block "gh auth status --show-token" "it prints the token"; fi ;;
      esac
      ;;
  esac
  if paranoid; then
    case $cmd in
      auth | repo | secret | ssh-key | gpg-key | config)
        block "gh $cmd" "paranoid mode forbids account and repository administration" ;;
      api) if api_writes "$@"; then block "gh api (write request)" "paranoid mode allows only GET requests"; fi ;;
      # These run git (or ssh) as children that inherit GH_TOKEN; a repository config the agent
      # wrote (ext:: remotes, credential helpers, filters) could hand it the token.
      pr)
        case $sub in
          checkout | co | create | new | merge) block "gh pr $sub" "paranoid mode forbids gh commands that run git with the token" ;;
        esac
        ;;
      gist)
        case $sub in
          clone | edit) block "gh gist $sub" "paranoid mode forbids gh commands that run git with the token" ;;
        esac
        ;;
      codespace | cs) block "gh $cmd" "paranoid mode forbids remote shells with the token" ;;
    esac
  fi
  return 0
}

main() {
  local check=0 mode
  if [[ ${1:-} == --check ]]; then
    check=1
    shift
  fi
  for mode in all none bools; do
    scan "$mode" "$@"
    verdict "$CMD" "$SUB" "$@"
  done
  if ((check)); then
    exit 0
  fi
  exec "$GH_REAL" "$@"
}

main "$@"
