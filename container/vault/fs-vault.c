/*
 * fs-vault.so -- LD_PRELOAD file firewall for the pimagic sandbox.
 *
 * Usage:
 *   echo /usr/local/lib/pimagic/fs-vault.so > /etc/ld.so.preload
 *
 * Loaded into every dynamically linked process. Wraps the libc entry points that
 * open or move files (open*, openat*, __open*_2, creat*, fopen*, freopen*, rename*,
 * link*) and fails them with EACCES when the resolved path is protected:
 *   - anything under /run/pimagic/ or /run/secrets/ (secrets; the kernel denies
 *     these as well: root-owned 0700 tmpfs);
 *   - /proc/<pid>/environ and /proc/<pid>/mem (also under task/<tid>/) of any
 *     process other than the caller;
 *   - a file named auth.json under a .pi directory or under $PI_CODING_AGENT_DIR;
 *   - a file named .env or .env.* (except .env.example).
 * Paths are made absolute against the cwd or the dirfd, then canonicalised with
 * realpath(3) when they exist, or lexically (".", "..", "//") plus the realpath
 * of the parent when they do not. rename/link check both ends without following
 * the last component. Refusals print "[SYSTEM BLOCK: libc-fs] ..." on stderr (app-firewall.js
 * says "node-fs"), so a test can tell which firewall refused.
 *
 * Exceptions: euid 0 (root's own maintenance, e.g. put-secret), and -- for the
 * auth.json/.env rules only -- the node binary started with the Node firewall
 * (NODE_OPTIONS carried --require=/usr/local/lib/pimagic/app-firewall.js at exec
 * time; decided once, in the constructor). pi itself must read auth.json; there
 * app-firewall.js decides from the JS call stack.
 *
 * This is a speed bump, not a boundary: static binaries, raw syscalls (syscall(2),
 * io_uring, ctypes) and glibc-internal opens do not come through here. Secrets
 * that matter are kept out of reach by the kernel (file modes, non-dumpable gh).
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>

#define NODE_BIN "/usr/local/bin/node"
#define APP_FIREWALL "/usr/local/lib/pimagic/app-firewall.js"

static int trusted_node;                /* node + app firewall at exec time */
static char agent_dir[PATH_MAX];        /* realpath of $PI_CODING_AGENT_DIR */

/* NODE_OPTIONS holds "--require=F", "--require F", "-r F" or "-r=F" with F the firewall. */
static int node_options_load_firewall(const char *opts)
{
    if (!opts)
        return 0;
    char buf[4096];
    if (strlen(opts) >= sizeof buf)
        return 0;
    strcpy(buf, opts);
    int want_arg = 0;
    char *save = NULL;
    for (char *tok = strtok_r(buf, " \t", &save); tok; tok = strtok_r(NULL, " \t", &save)) {
        if (want_arg && strcmp(tok, APP_FIREWALL) == 0)
            return 1;
        want_arg = strcmp(tok, "--require") == 0 || strcmp(tok, "-r") == 0;
        if (strcmp(tok, "--require=" APP_FIREWALL) == 0 || strcmp(tok, "-r=" APP_FIREWALL) == 0)
            return 1;
    }
    return 0;
}

/* Fail closed when an object preloaded ahead of us (LD_PRELOAD comes before /etc/ld.so.preload)
 * defines an entry point we wrap: our wrapper would never run, silently. */
static const char *const WRAPPED[] = {
    "open", "open64", "openat", "openat64", "__open_2", "__open64_2", "__openat_2", "__openat64_2",
    "creat", "creat64", "fopen", "fopen64", "freopen", "freopen64", "rename", "renameat", "renameat2",
    "link", "linkat",
};

static void refuse_if_shadowed(void)
{
    Dl_info self;
    if (!dladdr((void *)refuse_if_shadowed, &self) || !self.dli_fname)
        return;
    void *own = dlopen(self.dli_fname, RTLD_NOW | RTLD_NOLOAD);
    if (!own)
        return;
    for (size_t i = 0; i < sizeof WRAPPED / sizeof WRAPPED[0]; i++) {
        void *mine = dlsym(own, WRAPPED[i]);
        void *first = dlsym(RTLD_DEFAULT, WRAPPED[i]);
        if (mine && first && mine != first) {
            static const char msg[] = "[SYSTEM BLOCK: libc-fs] fs-vault: a preloaded library (LD_PRELOAD) shadows "
                                      "the file firewall; refusing to run\n";
            (void)!write(2, msg, sizeof msg - 1);
            _exit(126);
        }
    }
    dlclose(own);
}

__attribute__((constructor)) static void fs_vault_init(void)
{
    refuse_if_shadowed();
    char exe[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (n > 0) {
        exe[n] = '\0';
        trusted_node = strcmp(exe, NODE_BIN) == 0 && node_options_load_firewall(getenv("NODE_OPTIONS"));
    }
    const char *dir = getenv("PI_CODING_AGENT_DIR");
    if (!dir || !*dir || !realpath(dir, agent_dir))
        snprintf(agent_dir, sizeof agent_dir, "%s", dir && *dir == '/' ? dir : "/home/pi/.pi/agent");
}

/* Lexically normalise an absolute path in place: collapse "//", ".", "..". */
static void normalise(char *path)
{
    char out[PATH_MAX];
    size_t len = 0;
    const char *p = path;
    while (*p) {
        while (*p == '/')
            p++;
        if (!*p)
            break;
        const char *end = strchrnul(p, '/');
        size_t seg = (size_t)(end - p);
        if (seg == 1 && p[0] == '.') {
            /* skip */
        } else if (seg == 2 && p[0] == '.' && p[1] == '.') {
            while (len > 0 && out[len - 1] != '/')
                len--;
            if (len > 0)
                len--;
        } else if (len + 1 + seg < sizeof out) {
            out[len++] = '/';
            memcpy(out + len, p, seg);
            len += seg;
        }
        p = end;
    }
    if (len == 0)
        out[len++] = '/';
    out[len] = '\0';
    memcpy(path, out, len + 1);
}

/* Absolute, canonical form of (dirfd, path) in out. Returns 0, or -1 if unknown. */
static int resolve(int dirfd, const char *path, int follow_last, char *out)
{
    char abs[PATH_MAX];
    if (!path || !*path)
        return -1;
    if (path[0] == '/') {
        if (strlen(path) >= sizeof abs)
            return -1;
        strcpy(abs, path);
    } else {
        char base[PATH_MAX];
        if (dirfd == AT_FDCWD) {
            if (!getcwd(base, sizeof base))
                return -1;
        } else {
            char link[64];
            snprintf(link, sizeof link, "/proc/self/fd/%d", dirfd);
            ssize_t n = readlink(link, base, sizeof base - 1);
            if (n <= 0)
                return -1;
            base[n] = '\0';
        }
        if ((size_t)snprintf(abs, sizeof abs, "%s/%s", base, path) >= sizeof abs)
            return -1;
    }
    if (follow_last && realpath(abs, out))
        return 0;
    normalise(abs);
    /* not there (or not following): canonical parent + last component */
    char *slash = strrchr(abs, '/');
    char parent[PATH_MAX], real_parent[PATH_MAX];
    size_t plen = (size_t)(slash - abs);
    memcpy(parent, abs, plen);
    parent[plen] = '\0';
    if (plen == 0)
        strcpy(parent, "/");
    if (realpath(parent, real_parent) &&
        (size_t)snprintf(out, PATH_MAX, "%s/%s", strcmp(real_parent, "/") ? real_parent : "", slash + 1) < PATH_MAX)
        return 0;
    strcpy(out, abs);
    return 0;
}

static int under(const char *path, const char *dir)
{
    size_t n = strlen(dir);
    return strncmp(path, dir, n) == 0 && (path[n] == '/' || path[n] == '\0');
}

/* /proc/<pid>/{environ,mem} or /proc/<pid>/task/<tid>/{environ,mem}, pid not ours */
static int foreign_proc_secret(const char *path)
{
    if (strncmp(path, "/proc/", 6) != 0)
        return 0;
    const char *p = path + 6;
    char *end;
    long pid = strtol(p, &end, 10);
    if (end == p || *end != '/')
        return 0;
    p = end + 1;
    if (strncmp(p, "task/", 5) == 0) {
        const char *q = p + 5;
        strtol(q, &end, 10);
        if (end == q || *end != '/')
            return 0;
        p = end + 1;
    }
    if (strcmp(p, "environ") != 0 && strcmp(p, "mem") != 0)
        return 0;
    return pid != (long)getpid();
}

static int credential_file(const char *path)
{
    const char *base = strrchr(path, '/');
    base = base ? base + 1 : path;
    if (strcmp(base, ".env") == 0 || (strncmp(base, ".env.", 5) == 0 && strcmp(base, ".env.example") != 0))
        return 1;
    if (strcmp(base, "auth.json") == 0 && (strstr(path, "/.pi/") || under(path, agent_dir)))
        return 1;
    return 0;
}

static int denied_path(const char *path)
{
    if (under(path, "/run/pimagic") || under(path, "/run/secrets") || foreign_proc_secret(path))
        return 1;
    return !trusted_node && credential_file(path);
}

/* 1 when (dirfd, path) must be refused; sets errno and says so on stderr. */
static int blocked(int dirfd, const char *path, int follow_last)
{
    if (geteuid() == 0)
        return 0;
    char real[PATH_MAX];
    if (resolve(dirfd, path, follow_last, real) != 0) {
        /* cannot canonicalise: judge the string we were given */
        if (!path || strlen(path) >= sizeof real)
            return 0;
        strcpy(real, path);
    }
    if (!denied_path(real))
        return 0;
    char msg[PATH_MAX + 64];
    int n = snprintf(msg, sizeof msg, "[SYSTEM BLOCK: libc-fs] fs-vault: access to %s denied\n", real);
    if (n > 0)
        (void)!write(2, msg, (size_t)n < sizeof msg ? (size_t)n : sizeof msg - 1);
    errno = EACCES;
    return 1;
}

#define REAL(name) \
    static __typeof__(name) *real_##name; \
    if (!real_##name) \
        real_##name = (__typeof__(name) *)dlsym(RTLD_NEXT, #name); \
    if (!real_##name) { errno = ENOSYS; return 0; }

#define MODE_ARG(flags, mode) \
    mode_t mode = 0; \
    if (((flags) & O_CREAT) || ((flags) & O_TMPFILE) == O_TMPFILE) { va_list ap; va_start(ap, flags); mode = va_arg(ap, mode_t); va_end(ap); }

/* REAL() returns 0 on a missing symbol; for fds that must be -1. */
#define REAL_FD(name) \
    static __typeof__(name) *real_##name; \
    if (!real_##name) \
        real_##name = (__typeof__(name) *)dlsym(RTLD_NEXT, #name); \
    if (!real_##name) { errno = ENOSYS; return -1; }

int open(const char *path, int flags, ...)
{
    MODE_ARG(flags, mode);
    REAL_FD(open);
    if (blocked(AT_FDCWD, path, 1))
        return -1;
    return real_open(path, flags, mode);
}

int open64(const char *path, int flags, ...)
{
    MODE_ARG(flags, mode);
    REAL_FD(open64);
    if (blocked(AT_FDCWD, path, 1))
        return -1;
    return real_open64(path, flags, mode);
}

int openat(int dirfd, const char *path, int flags, ...)
{
    MODE_ARG(flags, mode);
    REAL_FD(openat);
    if (blocked(dirfd, path, 1))
        return -1;
    return real_openat(dirfd, path, flags, mode);
}

int openat64(int dirfd, const char *path, int flags, ...)
{
    MODE_ARG(flags, mode);
    REAL_FD(openat64);
    if (blocked(dirfd, path, 1))
        return -1;
    return real_openat64(dirfd, path, flags, mode);
}

int __open_2(const char *path, int flags);
int __open64_2(const char *path, int flags);
int __openat_2(int dirfd, const char *path, int flags);
int __openat64_2(int dirfd, const char *path, int flags);

int __open_2(const char *path, int flags)
{
    REAL_FD(__open_2);
    if (blocked(AT_FDCWD, path, 1))
        return -1;
    return real___open_2(path, flags);
}

int __open64_2(const char *path, int flags)
{
    REAL_FD(__open64_2);
    if (blocked(AT_FDCWD, path, 1))
        return -1;
    return real___open64_2(path, flags);
}

int __openat_2(int dirfd, const char *path, int flags)
{
    REAL_FD(__openat_2);
    if (blocked(dirfd, path, 1))
        return -1;
    return real___openat_2(dirfd, path, flags);
}

int __openat64_2(int dirfd, const char *path, int flags)
{
    REAL_FD(__openat64_2);
    if (blocked(dirfd, path, 1))
        return -1;
    return real___openat64_2(dirfd, path, flags);
}

int creat(const char *path, mode_t mode)
{
    REAL_FD(creat);
    if (blocked(AT_FDCWD, path, 1))
        return -1;
    return real_creat(path, mode);
}

int creat64(const char *path, mode_t mode)
{
    REAL_FD(creat64);
    if (blocked(AT_FDCWD, path, 1))
        return -1;
    return real_creat64(path, mode);
}

FILE *fopen(const char *path, const char *mode)
{
    REAL(fopen);
    if (blocked(AT_FDCWD, path, 1))
        return NULL;
    return real_fopen(path, mode);
}

FILE *fopen64(const char *path, const char *mode)
{
    REAL(fopen64);
    if (blocked(AT_FDCWD, path, 1))
        return NULL;
    return real_fopen64(path, mode);
}

FILE *freopen(const char *path, const char *mode, FILE *stream)
{
    REAL(freopen);
    if (path && blocked(AT_FDCWD, path, 1))
        return NULL;
    return real_freopen(path, mode, stream);
}

FILE *freopen64(const char *path, const char *mode, FILE *stream)
{
    REAL(freopen64);
    if (path && blocked(AT_FDCWD, path, 1))
        return NULL;
    return real_freopen64(path, mode, stream);
}

/* Moving or linking a protected file would give it an unprotected name. */
int rename(const char *from, const char *to)
{
    REAL_FD(rename);
    if (blocked(AT_FDCWD, from, 0) || blocked(AT_FDCWD, to, 0))
        return -1;
    return real_rename(from, to);
}

int renameat(int fromfd, const char *from, int tofd, const char *to)
{
    REAL_FD(renameat);
    if (blocked(fromfd, from, 0) || blocked(tofd, to, 0))
        return -1;
    return real_renameat(fromfd, from, tofd, to);
}

int renameat2(int fromfd, const char *from, int tofd, const char *to, unsigned int flags)
{
    REAL_FD(renameat2);
    if (blocked(fromfd, from, 0) || blocked(tofd, to, 0))
        return -1;
    return real_renameat2(fromfd, from, tofd, to, flags);
}

int link(const char *from, const char *to)
{
    REAL_FD(link);
    if (blocked(AT_FDCWD, from, 1) || blocked(AT_FDCWD, to, 0))
        return -1;
    return real_link(from, to);
}

int linkat(int fromfd, const char *from, int tofd, const char *to, int flags)
{
    REAL_FD(linkat);
    if (blocked(fromfd, from, (flags & AT_SYMLINK_FOLLOW) != 0) || blocked(tofd, to, 0))
        return -1;
    return real_linkat(fromfd, from, tofd, to, flags);
}
