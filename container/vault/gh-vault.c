/*
 * gh-vault -- run the GitHub CLI with a token its caller cannot read.
 *
 * Usage:
 *   gh [ARGS...]
 *
 * Installed setuid root as /usr/local/lib/pimagic/gh-vault; /usr/local/bin/gh is a
 * symlink to it. The container runs with an empty capability bounding set, so the
 * setuid bit yields euid 0 without capabilities: enough to read the root-owned
 * 0400 files in the root-owned 0700 tmpfs /run/pimagic, nothing more.
 *
 * Flow (fails closed: any unexpected error exits non-zero before gh runs):
 *   1. refuse real uid 0; require euid 0 (the setuid bit); make fds 0-2 valid and
 *      close every fd above 2;
 *   2. read /run/pimagic/policy as root ("paranoid=0|1"; missing or unreadable
 *      means paranoid=1) -- never the caller's environment;
 *   3. build a fresh environment: only TERM, LANG, LC_ALL, LC_CTYPE, NO_COLOR,
 *      COLUMNS, TZ survive from the caller, plus fixed values (PATH, HOME,
 *      GH_CONFIG_DIR, XDG_DATA_HOME, GH_* switches, no global git config, and
 *      pager/browser/editor/ssh/askpass pointing at gh-no-spawn, which is execute-only
 *      like git: every program gh starts with the token is non-dumpable);
 *   4. decide with gh-policy.c whether this command line may run with the token --
 *      here, in this setuid (so non-dumpable) process the caller can neither read nor
 *      change; a refusal prints one "ERROR: gh-guard: ..." line and exits 126;
 *   5. read /run/pimagic/github_token as root (missing: gh runs without a token),
 *      put GH_TOKEN in the environment, wipe the read buffer;
 *   6. drop privileges for good (setresgid/setresuid to the real ids, verified with
 *      getresgid/getresuid) and execve gh-real, which is mode 0711: a process that
 *      exec's a binary it cannot read is non-dumpable, so the caller's uid cannot
 *      read its /proc/<pid>/environ or memory -- nor can gh itself (its /proc files
 *      belong to root), so `--body-file /proc/self/environ` and the like fail.
 *
 * Built static (no LD_PRELOAD library, no NSS in a setuid process).
 * Exit status: gh's, or 126 when refused or on vault errors.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <unistd.h>

#include "gh-policy.h"

#define SECRET_DIR "/run/pimagic"
#define POLICY_FILE SECRET_DIR "/policy"
#define TOKEN_FILE SECRET_DIR "/github_token"
#define GH_REAL "/usr/local/lib/pimagic/gh-real"
#define AGENT_HOME "/home/pi"

#define MAX_SECRET 4096
#define MAX_ENV 96
#define EXIT_VAULT 126

extern char **environ;

static const char *const passthrough[] = {
    "TERM", "LANG", "LC_ALL", "LC_CTYPE", "NO_COLOR", "COLUMNS", "TZ", NULL,
};

/* Programs gh or git could start get gh-no-spawn: a stub that is execute-only (so the
 * process holding the token stays non-dumpable) and fails. GH_PAGER/GIT_PAGER=cat are
 * skipped by gh and git rather than run. Entries are literal strings: a test parses them. */
static const char *const fixed_env[] = {
    "PATH=/usr/local/bin:/usr/bin:/bin",
    "GH_CONFIG_DIR=/etc/pimagic/gh",
    "XDG_DATA_HOME=/etc/pimagic/gh-data",
    "GH_NO_UPDATE_NOTIFIER=1",
    "GH_PROMPT_DISABLED=1",
    "GH_SPINNER_DISABLED=1",
    "GH_PAGER=cat",
    "PAGER=cat",
    "GIT_PAGER=cat",
    "GH_BROWSER=/usr/local/lib/pimagic/gh-no-spawn",
    "BROWSER=/usr/local/lib/pimagic/gh-no-spawn",
    "GH_EDITOR=/usr/local/lib/pimagic/gh-no-spawn",
    "GIT_EDITOR=/usr/local/lib/pimagic/gh-no-spawn",
    "GIT_SEQUENCE_EDITOR=/usr/local/lib/pimagic/gh-no-spawn",
    "VISUAL=/usr/local/lib/pimagic/gh-no-spawn",
    "EDITOR=/usr/local/lib/pimagic/gh-no-spawn",
    "GIT_SSH_COMMAND=/usr/local/lib/pimagic/gh-no-spawn",
    "GIT_ASKPASS=/usr/local/lib/pimagic/gh-no-spawn",
    "SSH_ASKPASS=/usr/local/lib/pimagic/gh-no-spawn",
    "GIT_TERMINAL_PROMPT=0",
    "GIT_CONFIG_NOSYSTEM=1",
    /* the agent's ~/.gitconfig could include a FIFO (parking git) or name programs */
    "GIT_CONFIG_GLOBAL=/dev/null",
    /* gh runs git with GH_TOKEN in its environment; keep repo config (agent-writable
     * outside /workspace) from starting programs through single-valued keys, which
     * command-line config overrides. Filter and merge drivers and URL-scoped http.*
     * keys cannot be overridden this way (SECURITY.md, limits). */
    "GIT_CONFIG_COUNT=15",
    "GIT_CONFIG_KEY_0=core.fsmonitor", "GIT_CONFIG_VALUE_0=false",
    "GIT_CONFIG_KEY_1=core.hooksPath", "GIT_CONFIG_VALUE_1=/dev/null",
    "GIT_CONFIG_KEY_2=core.sshCommand", "GIT_CONFIG_VALUE_2=/usr/local/lib/pimagic/gh-no-spawn",
    "GIT_CONFIG_KEY_3=core.pager", "GIT_CONFIG_VALUE_3=cat",
    "GIT_CONFIG_KEY_4=core.editor", "GIT_CONFIG_VALUE_4=/usr/local/lib/pimagic/gh-no-spawn",
    "GIT_CONFIG_KEY_5=core.askPass", "GIT_CONFIG_VALUE_5=/usr/local/lib/pimagic/gh-no-spawn",
    "GIT_CONFIG_KEY_6=protocol.allow", "GIT_CONFIG_VALUE_6=never",
    "GIT_CONFIG_KEY_7=protocol.https.allow", "GIT_CONFIG_VALUE_7=always",
    "GIT_CONFIG_KEY_8=protocol.ext.allow", "GIT_CONFIG_VALUE_8=never",
    "GIT_CONFIG_KEY_9=protocol.file.allow", "GIT_CONFIG_VALUE_9=never",
    "GIT_CONFIG_KEY_10=protocol.http.allow", "GIT_CONFIG_VALUE_10=never",
    "GIT_CONFIG_KEY_11=gpg.program", "GIT_CONFIG_VALUE_11=/usr/local/lib/pimagic/gh-no-spawn",
    "GIT_CONFIG_KEY_12=log.showSignature", "GIT_CONFIG_VALUE_12=false",
    "GIT_CONFIG_KEY_13=http.sslVerify", "GIT_CONFIG_VALUE_13=true",
    "GIT_CONFIG_KEY_14=http.proxy", "GIT_CONFIG_VALUE_14=",
    NULL,
};

__attribute__((noreturn)) static void die(const char *what)
{
    fprintf(stderr, "gh-vault: ERROR: %s\n", what);
    exit(EXIT_VAULT);
}

__attribute__((noreturn)) static void die_errno(const char *what)
{
    fprintf(stderr, "gh-vault: ERROR: ");
    perror(what);
    exit(EXIT_VAULT);
}

/* fds 0-2 must exist (or files we open would land there); nothing else may leak. */
static void sanitize_fds(void)
{
    for (int fd = 0; fd <= 2; fd++) {
        if (fcntl(fd, F_GETFD) == -1 && errno == EBADF) {
            int nul = open("/dev/null", O_RDWR);
            if (nul == -1)
                die_errno("open /dev/null");
            if (nul != fd)
                die("could not reopen a closed standard fd");
        }
    }
#ifdef SYS_close_range
    if (syscall(SYS_close_range, 3U, ~0U, 0U) == 0)
        return;
    if (errno != ENOSYS)
        die_errno("close_range");
#endif
    long max = sysconf(_SC_OPEN_MAX);
    if (max < 0 || max > 1048576)
        max = 1048576;
    for (long fd = 3; fd < max; fd++)
        (void)close((int)fd);
}

/*
 * Read a small root-owned regular file. Returns the length, or -1 when it does not
 * exist. Any other problem is fatal.
 */
static ssize_t read_secret(const char *path, char *buf, size_t size)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NOCTTY);
    if (fd == -1) {
        if (errno == ENOENT)
            return -1;
        die_errno(path);
    }
    struct stat st;
    if (fstat(fd, &st) == -1)
        die_errno(path);
    if (!S_ISREG(st.st_mode) || st.st_uid != 0 || (st.st_mode & 077) != 0) {
        fprintf(stderr, "gh-vault: ERROR: %s must be a regular file owned by root, mode 0400\n", path);
        exit(EXIT_VAULT);
    }
    size_t len = 0;
    while (len < size - 1) {
        ssize_t n = read(fd, buf + len, size - 1 - len);
        if (n == -1) {
            if (errno == EINTR)
                continue;
            die_errno(path);
        }
        if (n == 0)
            break;
        len += (size_t)n;
    }
    buf[len] = '\0';
    if (close(fd) == -1)
        die_errno(path);
    return (ssize_t)len;
}

/* paranoid unless the policy file says exactly paranoid=0 (on a line of its own). */
static int read_paranoid(void)
{
    char buf[MAX_SECRET];
    ssize_t len = read_secret(POLICY_FILE, buf, sizeof buf);
    if (len < 0)
        return 1;
    int paranoid = 1;
    for (char *line = strtok(buf, "\n"); line; line = strtok(NULL, "\n")) {
        line[strcspn(line, "\r \t")] = '\0';
        if (strcmp(line, "paranoid=0") == 0)
            paranoid = 0;
        else if (strcmp(line, "paranoid=1") == 0)
            paranoid = 1;
    }
    explicit_bzero(buf, sizeof buf);
    return paranoid;
}

static void env_add(char **env, size_t *n, const char *entry)
{
    if (*n + 1 >= MAX_ENV)
        die("environment too large");
    env[(*n)++] = (char *)entry;
    env[*n] = NULL;
}

static size_t build_env(char **env)
{
    size_t n = 0;
    env[0] = NULL;
    for (const char *const *f = fixed_env; *f; f++)
        env_add(env, &n, *f);
    /* HOME comes from our context, not the caller's: the only home is /home/pi. */
    env_add(env, &n, "HOME=" AGENT_HOME);
    for (const char *const *name = passthrough; *name; name++) {
        const char *value = getenv(*name);
        if (!value || strlen(value) > 256)
            continue;
        size_t len = strlen(*name) + 1 + strlen(value) + 1;
        char *entry = malloc(len);
        if (!entry)
            die_errno("malloc");
        snprintf(entry, len, "%s=%s", *name, value);
        env_add(env, &n, entry);
    }
    return n;
}

static void drop_privileges(uid_t ruid, gid_t rgid)
{
    if (setresgid(rgid, rgid, rgid) == -1)
        die_errno("setresgid");
    if (setresuid(ruid, ruid, ruid) == -1)
        die_errno("setresuid");
    uid_t r, e, s;
    gid_t gr, ge, gs;
    if (getresuid(&r, &e, &s) == -1)
        die_errno("getresuid");
    if (getresgid(&gr, &ge, &gs) == -1)
        die_errno("getresgid");
    if (r != ruid || e != ruid || s != ruid || gr != rgid || ge != rgid || gs != rgid)
        abort();
    if (setuid(0) == 0 || seteuid(0) == 0)
        abort();
}

/* Returns only when the policy allows `gh argv...`; argv is the caller's, so nothing of it
 * is printed raw (gh_verdict.what is sanitised). */
static void check_policy(int argc, char **argv, int paranoid)
{
    struct gh_verdict v;
    gh_policy_check(argc, argv, paranoid, &v);
    if (v.allowed)
        return;
    fprintf(stderr, "ERROR: gh-guard: '%s' is blocked in this sandbox: %s\n", v.what, v.why);
    exit(EXIT_VAULT);
}

static int token_char_ok(char c)
{
    return c > 0x20 && c < 0x7f;
}

int main(int argc, char **argv)
{
    uid_t ruid, euid, suid;
    if (getresuid(&ruid, &euid, &suid) == -1)
        die_errno("getresuid");
    gid_t rgid = getgid();
    if (ruid == 0)
        die("refusing to run for uid 0 (use " GH_REAL " directly)");
    if (euid != 0)
        die("not setuid root: cannot read the token (is the image intact?)");
    if (argc < 1)
        die("no argv");
    sanitize_fds();

    int paranoid = read_paranoid();

    check_policy(argc, argv, paranoid);

    char *env[MAX_ENV];
    size_t n = build_env(env);

    static char token[MAX_SECRET];
    char *token_entry = NULL;
    size_t token_entry_len = 0;
    ssize_t len = read_secret(TOKEN_FILE, token, sizeof token);
    if (len > 0) {
        while (len > 0 && (token[len - 1] == '\n' || token[len - 1] == '\r' || token[len - 1] == ' '))
            token[--len] = '\0';
        for (ssize_t i = 0; i < len; i++) {
            if (!token_char_ok(token[i])) {
                explicit_bzero(token, sizeof token);
                die(TOKEN_FILE " holds characters a token cannot have");
            }
        }
    }
    if (len > 0) {
        token_entry_len = sizeof "GH_TOKEN=" + (size_t)len;
        token_entry = malloc(token_entry_len);
        if (!token_entry) {
            explicit_bzero(token, sizeof token);
            die_errno("malloc");
        }
        snprintf(token_entry, token_entry_len, "GH_TOKEN=%s", token);
        env_add(env, &n, token_entry);
    }
    explicit_bzero(token, sizeof token);

    drop_privileges(ruid, rgid);

    argv[0] = "gh";
    execve(GH_REAL, argv, env);
    int saved = errno;
    if (token_entry)
        explicit_bzero(token_entry, token_entry_len);
    errno = saved;
    die_errno("execve " GH_REAL);
}
