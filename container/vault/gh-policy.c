/*
 * gh-policy -- the allow-list of gh command lines, decided inside the setuid vault.
 *
 * gh (cobra/pflag) finds its command by skipping flags; a guard that reads the line
 * differently from gh can be steered (`gh "" repo delete`: cobra skips the empty word).
 * So this parser is stricter than gh and refuses whatever it cannot read the same way:
 *
 *   - before the subcommand only --help, --version (top level) and -R/--repo VALUE may
 *     appear; no empty words, no "--", no control characters or edge whitespace;
 *   - the (command, subcommand) pair must be in the table below (gh 2.23's built-ins and
 *     their aliases); anything else is an alias or an extension and is refused;
 *   - always refused: commands that print the token or run code with it (auth token,
 *     auth git-credential, auth status --show-token, alias, extension);
 *   - paranoid mode also refuses account/repository administration, API writes and the
 *     commands that run git or ssh holding the token;
 *   - every argument: --jq / --template / -q / -t in any spelling (jq and Go templates
 *     see gh's environment, and so the token); hosts other than github.com in URLs and
 *     in -R HOST/OWNER/REPO; anything naming github.localhost (gh sends the github.com
 *     token there, over plain HTTP);
 *   - gh api: known flags only, one endpoint that is a path (no URL, no host),
 *     --hostname github.com only;
 *   - repo clone/fork, gist clone: no git options after "--".
 *
 * What gh reads from files (--body-file /proc/self/environ...) is not decided here: gh is
 * not dumpable, so its own /proc files belong to root and it cannot open them.
 */
#include "gh-policy.h"

#include <stddef.h>
#include <string.h>

enum rule { OK, PARANOID, ALWAYS };

struct sub {
    const char *name, *alias;
    enum rule rule;
    const char *why;
};

struct cmd {
    const char *name, *alias1, *alias2;
    enum rule rule;
    const char *why;
    const struct sub *subs; /* NULL: the command takes no subcommand */
};

static const char WHY_TOKEN[] = "it prints the token";
static const char WHY_ADMIN[] = "paranoid mode forbids account and repository administration";
static const char WHY_GIT[] = "paranoid mode forbids gh commands that run git with the token";
static const char WHY_SHELL[] = "paranoid mode forbids remote shells with the token";
static const char WHY_EXT[] = "extensions run arbitrary code with the token";
static const char WHY_ALIAS[] = "aliases can run arbitrary commands with the token";
static const char WHY_UNKNOWN[] =
    "not one of gh's built-in commands (aliases and extensions are not allowed); see `gh help`";
static const char WHY_UNKNOWN_SUB[] = "not one of this command's subcommands; see `gh help <command>`";
static const char WHY_ODD[] =
    "empty words, control characters and leading/trailing spaces before the subcommand hide it from the "
    "guard; remove them";
static const char WHY_PREFLAG[] =
    "before the subcommand only --help, --version and -R/--repo are allowed; put other flags after it";
static const char WHY_JQ[] =
    "jq filters and Go templates can read gh's environment, which holds the token; use --json and filter "
    "the output yourself (e.g. pipe it to python3); -q and -t are their short forms (write --title for a title)";
static const char WHY_HOST[] = "the token may only be sent to github.com";
static const char WHY_LOOPBACK[] = "gh sends the github.com token to github.localhost hosts over plain HTTP";
static const char WHY_API_FLAG[] = "not a gh api flag this sandbox knows; allowed: -X -F -f -H -i -p --input "
                                   "--paginate --silent --cache --hostname github.com";
static const char WHY_API_ENDPOINT[] =
    "gh api takes a path relative to the API (e.g. repos/OWNER/REPO), not a URL or another host";
static const char WHY_API_WRITE[] = "paranoid mode allows only GET requests";
static const char WHY_MISSING[] = "the flag needs a value";
static const char WHY_SUBMODULES[] =
    "git's submodule command is a shell script, and a shell the agent can read would hold the token";
static const char WHY_GIT_ARGS[] =
    "git options after -- (-c filter..., --config) can start programs that inherit the token";

#define END {NULL, NULL, OK, NULL}

static const struct sub auth_subs[] = {
    {"login", NULL, OK, NULL}, {"logout", NULL, OK, NULL}, {"refresh", NULL, OK, NULL},
    {"setup-git", NULL, OK, NULL}, {"status", NULL, OK, NULL},
    {"token", NULL, ALWAYS, WHY_TOKEN}, {"git-credential", NULL, ALWAYS, WHY_TOKEN}, END,
};
static const struct sub codespace_subs[] = {
    {"code", NULL, OK, NULL}, {"cp", NULL, OK, NULL}, {"create", NULL, OK, NULL}, {"delete", NULL, OK, NULL},
    {"edit", NULL, OK, NULL}, {"jupyter", NULL, OK, NULL}, {"list", "ls", OK, NULL}, {"logs", NULL, OK, NULL},
    {"ports", NULL, OK, NULL}, {"rebuild", NULL, OK, NULL}, {"ssh", NULL, OK, NULL}, {"stop", NULL, OK, NULL}, END,
};
static const struct sub gist_subs[] = {
    {"clone", NULL, PARANOID, WHY_GIT}, {"create", "new", OK, NULL}, {"delete", NULL, OK, NULL},
    {"edit", NULL, PARANOID, WHY_GIT}, {"list", "ls", OK, NULL}, {"view", NULL, OK, NULL}, END,
};
static const struct sub issue_subs[] = {
    {"create", "new", OK, NULL}, {"list", "ls", OK, NULL}, {"status", NULL, OK, NULL}, {"close", NULL, OK, NULL},
    {"comment", NULL, OK, NULL}, {"delete", NULL, OK, NULL}, {"develop", NULL, PARANOID, WHY_GIT},
    {"edit", NULL, OK, NULL}, {"lock", NULL, OK, NULL}, {"pin", NULL, OK, NULL}, {"reopen", NULL, OK, NULL},
    {"transfer", NULL, OK, NULL}, {"unlock", NULL, OK, NULL}, {"unpin", NULL, OK, NULL}, {"view", NULL, OK, NULL},
    END,
};
static const struct sub pr_subs[] = {
    {"create", "new", PARANOID, WHY_GIT}, {"list", "ls", OK, NULL}, {"status", NULL, OK, NULL},
    {"checkout", "co", PARANOID, WHY_GIT}, {"checks", NULL, OK, NULL}, {"close", NULL, OK, NULL},
    {"comment", NULL, OK, NULL}, {"diff", NULL, OK, NULL}, {"edit", NULL, OK, NULL}, {"lock", NULL, OK, NULL},
    {"merge", NULL, PARANOID, WHY_GIT}, {"ready", NULL, OK, NULL}, {"reopen", NULL, OK, NULL},
    {"review", NULL, OK, NULL}, {"unlock", NULL, OK, NULL}, {"view", NULL, OK, NULL}, END,
};
static const struct sub release_subs[] = {
    {"create", "new", OK, NULL}, {"list", "ls", OK, NULL}, {"delete", NULL, OK, NULL},
    {"delete-asset", NULL, OK, NULL}, {"download", NULL, OK, NULL}, {"edit", NULL, OK, NULL},
    {"upload", NULL, OK, NULL}, {"view", NULL, OK, NULL}, END,
};
static const struct sub repo_subs[] = {
    {"create", "new", OK, NULL}, {"list", "ls", OK, NULL}, {"archive", NULL, OK, NULL}, {"clone", NULL, OK, NULL},
    {"delete", NULL, OK, NULL}, {"deploy-key", NULL, OK, NULL}, {"edit", NULL, OK, NULL}, {"fork", NULL, OK, NULL},
    {"rename", NULL, OK, NULL}, {"set-default", NULL, OK, NULL}, {"sync", NULL, OK, NULL}, {"view", NULL, OK, NULL},
    END,
};
static const struct sub run_subs[] = {
    {"cancel", NULL, OK, NULL}, {"download", NULL, OK, NULL}, {"list", "ls", OK, NULL},
    {"rerun", NULL, OK, NULL}, {"view", NULL, OK, NULL}, {"watch", NULL, OK, NULL}, END,
};
static const struct sub workflow_subs[] = {
    {"disable", NULL, OK, NULL}, {"enable", NULL, OK, NULL}, {"list", "ls", OK, NULL},
    {"run", NULL, OK, NULL}, {"view", NULL, OK, NULL}, END,
};
static const struct sub config_subs[] = {
    {"get", NULL, OK, NULL}, {"list", "ls", OK, NULL}, {"set", NULL, OK, NULL}, END,
};
static const struct sub key_subs[] = {
    {"add", NULL, OK, NULL}, {"delete", NULL, OK, NULL}, {"list", "ls", OK, NULL}, END,
};
static const struct sub label_subs[] = {
    {"clone", NULL, OK, NULL}, {"create", NULL, OK, NULL}, {"delete", NULL, OK, NULL},
    {"edit", NULL, OK, NULL}, {"list", "ls", OK, NULL}, END,
};
static const struct sub search_subs[] = {
    {"commits", NULL, OK, NULL}, {"issues", NULL, OK, NULL}, {"prs", NULL, OK, NULL}, {"repos", NULL, OK, NULL}, END,
};
static const struct sub secret_subs[] = {
    {"delete", "remove", OK, NULL}, {"list", "ls", OK, NULL}, {"set", NULL, OK, NULL}, END,
};
static const struct sub none_subs[] = {END};

static const struct cmd commands[] = {
    {"api", NULL, NULL, OK, NULL, NULL},
    {"auth", NULL, NULL, PARANOID, WHY_ADMIN, auth_subs},
    {"browse", NULL, NULL, OK, NULL, NULL},
    {"codespace", "cs", NULL, PARANOID, WHY_SHELL, codespace_subs},
    {"completion", NULL, NULL, OK, NULL, NULL},
    {"config", NULL, NULL, PARANOID, WHY_ADMIN, config_subs},
    {"gist", NULL, NULL, OK, NULL, gist_subs},
    {"gpg-key", NULL, NULL, PARANOID, WHY_ADMIN, key_subs},
    {"help", NULL, NULL, OK, NULL, NULL},
    {"issue", NULL, NULL, OK, NULL, issue_subs},
    {"label", NULL, NULL, OK, NULL, label_subs},
    {"pr", NULL, NULL, OK, NULL, pr_subs},
    {"release", NULL, NULL, OK, NULL, release_subs},
    {"repo", NULL, NULL, PARANOID, WHY_ADMIN, repo_subs},
    {"run", NULL, NULL, OK, NULL, run_subs},
    {"search", NULL, NULL, OK, NULL, search_subs},
    {"secret", NULL, NULL, PARANOID, WHY_ADMIN, secret_subs},
    {"ssh-key", NULL, NULL, PARANOID, WHY_ADMIN, key_subs},
    {"status", NULL, NULL, OK, NULL, NULL},
    {"version", NULL, NULL, OK, NULL, NULL},
    {"workflow", NULL, NULL, OK, NULL, workflow_subs},
    {"alias", NULL, NULL, ALWAYS, WHY_ALIAS, none_subs},
    {"extension", "extensions", "ext", ALWAYS, WHY_EXT, none_subs},
    {NULL, NULL, NULL, OK, NULL, NULL},
};

/* ------------------------------------------------------------------ helpers */

static int refuse(struct gh_verdict *v, const char *why, const char *a, const char *b, const char *c)
{
    const char *parts[3] = {a, b, c};
    size_t n = 0;
    for (int p = 0; p < 3; p++) {
        if (!parts[p])
            continue;
        if (p > 0 && n > 0 && n < sizeof v->what - 1)
            v->what[n++] = ' ';
        for (const unsigned char *s = (const unsigned char *)parts[p]; *s && n < sizeof v->what - 4; s++)
            v->what[n++] = (*s >= 0x20 && *s < 0x7f && *s != '\'') ? (char)*s : '?';
        if (n >= sizeof v->what - 4 && parts[p][0]) {
            memcpy(v->what + sizeof v->what - 4, "...", 3);
            n = sizeof v->what - 1;
        }
    }
    v->what[n] = '\0';
    v->allowed = 0;
    v->why = why;
    return 0;
}

static int ascii_lower(int c)
{
    return (c >= 'A' && c <= 'Z') ? c + ('a' - 'A') : c;
}

/* name[0..n) equals word, ASCII case-insensitively */
static int word_is(const char *name, size_t n, const char *word)
{
    if (strlen(word) != n)
        return 0;
    for (size_t i = 0; i < n; i++)
        if (ascii_lower((unsigned char)name[i]) != word[i])
            return 0;
    return 1;
}

/* Empty, control characters or spaces at either end: things cobra and a guard read differently. */
static int odd_word(const char *a)
{
    size_t n = strlen(a);
    if (n == 0 || a[0] == ' ' || a[n - 1] == ' ')
        return 1;
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)a[i] < 0x20 || (unsigned char)a[i] == 0x7f)
            return 1;
    return 0;
}

/*
 * Does s contain pat (lower-case ASCII), where an ASCII byte matches case-insensitively and
 * one non-ASCII character matches any pattern byte? gh lower-cases host names with Go's
 * Unicode rules (U+0130 becomes 'i'), so a non-ASCII look-alike must count as a match.
 */
static int contains_fuzzy(const char *s, const char *pat)
{
    for (const unsigned char *start = (const unsigned char *)s; *start; start++) {
        const unsigned char *p = start;
        const char *q = pat;
        while (*q && *p) {
            if (*p < 0x80) {
                if (ascii_lower(*p) != *q)
                    break;
                p++;
            } else {
                p++;
                while ((*p & 0xc0) == 0x80)
                    p++;
            }
            q++;
        }
        if (!*q)
            return 1;
    }
    return 0;
}

/* host[0..n) is github.com or a subdomain of it, in plain ASCII */
static int github_host(const char *host, size_t n)
{
    static const char gh[] = "github.com";
    const size_t g = sizeof gh - 1;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)host[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' || c == '.'))
            return 0;
    }
    if (n == g)
        return word_is(host, n, gh);
    return n > g && host[n - g - 1] == '.' && word_is(host + n - g, g, gh);
}

/* A URL-looking value (scheme://host... or git@host:...) must point at github.com. */
static int url_ok(const char *a)
{
    const char *s = a;
    if (strncmp(s, "git@", 4) == 0) {
        s += 4;
        return github_host(s, strcspn(s, ":/"));
    }
    if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z')))
        return 1; /* gh reads a URL only from a word that starts with its scheme */
    s += strspn(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789+.-");
    if (strncmp(s, "://", 3) != 0)
        return 1;
    s += 3;
    return github_host(s, strcspn(s, "/?#"));
}

/* -R/--repo value: OWNER/REPO, or HOST/OWNER/REPO with HOST github.com, or a github.com URL */
static int repo_ok(const char *value)
{
    if (strstr(value, "://") || strncmp(value, "git@", 4) == 0)
        return url_ok(value);
    const char *slash = strchr(value, '/');
    if (!slash || !strchr(slash + 1, '/'))
        return 1;
    return github_host(value, (size_t)(slash - value));
}

/* --jq, --template, -q, -t in any spelling: --jq=X, -qX, clusters such as -Lq. */
static int evaluates_templates(const char *a)
{
    if (a[0] != '-' || a[1] == '\0')
        return 0;
    if (a[1] == '-') {
        const char *name = a + 2;
        size_t n = strcspn(name, "=");
        return word_is(name, n, "jq") || word_is(name, n, "template");
    }
    if (a[1] == 'R')
        return 0; /* -RVALUE: the rest is a repository */
    return strpbrk(a + 1, "qt") != NULL;
}

static const struct cmd *find_cmd(const char *word)
{
    for (const struct cmd *c = commands; c->name; c++)
        if (strcmp(word, c->name) == 0 || (c->alias1 && strcmp(word, c->alias1) == 0) ||
            (c->alias2 && strcmp(word, c->alias2) == 0))
            return c;
    return NULL;
}

static const struct sub *find_sub(const struct cmd *c, const char *word)
{
    for (const struct sub *s = c->subs; s && s->name; s++)
        if (strcmp(word, s->name) == 0 || (s->alias && strcmp(word, s->alias) == 0))
            return s;
    return NULL;
}

/* ------------------------------------------------------------------ checks over every argument */

static int check_every_argument(int argc, char *const argv[], struct gh_verdict *v)
{
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (evaluates_templates(a))
            return refuse(v, WHY_JQ, a, NULL, NULL);
        if (contains_fuzzy(a, "github.localhost"))
            return refuse(v, WHY_LOOPBACK, a, NULL, NULL);
        const char *eq = (a[0] == '-' && a[1] == '-') ? strchr(a, '=') : NULL;
        if (!url_ok(a) || (eq && !url_ok(eq + 1)))
            return refuse(v, WHY_HOST, a, NULL, NULL);
        const char *repo = NULL, *separate = NULL;
        if (strcmp(a, "-R") == 0 || strcmp(a, "--repo") == 0)
            repo = separate = i + 1 < argc ? argv[i + 1] : "";
        else if (strncmp(a, "--repo=", 7) == 0)
            repo = a + 7;
        else if (strncmp(a, "-R", 2) == 0)
            repo = a + 2 + (a[2] == '=');
        if (repo && !repo_ok(repo))
            return refuse(v, WHY_HOST, a, separate, NULL);
    }
    return 1;
}

/* ------------------------------------------------------------------ gh api */

struct api_flag {
    const char *lng;
    char shrt;
    int takes_value;
};

static const struct api_flag api_flags[] = {
    {"method", 'X', 1}, {"field", 'F', 1}, {"raw-field", 'f', 1}, {"header", 'H', 1}, {"input", 0, 1},
    {"hostname", 0, 1}, {"preview", 'p', 1}, {"cache", 0, 1}, {"paginate", 0, 0}, {"include", 'i', 0},
    {"silent", 0, 0}, {"help", 0, 0}, {NULL, 0, 0}, /* no --verbose: newer gh prints request headers */
};

static const struct api_flag *api_long(const char *name, size_t n)
{
    for (const struct api_flag *f = api_flags; f->lng; f++)
        if (strlen(f->lng) == n && strncmp(name, f->lng, n) == 0)
            return f;
    return NULL;
}

static const struct api_flag *api_short(char c)
{
    for (const struct api_flag *f = api_flags; f->lng; f++)
        if (f->shrt && f->shrt == c)
            return f;
    return NULL;
}

static int endpoint_ok(const char *e)
{
    if (odd_word(e) || strstr(e, "://") || strchr(e, '\\') || strchr(e, ' ') || strchr(e, '@'))
        return 0;
    return strncmp(e, "//", 2) != 0;
}

static int check_api(int start, int argc, char *const argv[], int paranoid, struct gh_verdict *v)
{
    const char *endpoint = NULL;
    int writes = 0, rest = 0;
    for (int i = start; i < argc; i++) {
        const char *a = argv[i];
        if (rest || a[0] != '-' || a[1] == '\0') {
            if (endpoint)
                return refuse(v, WHY_API_ENDPOINT, "gh api", a, "(a second endpoint)");
            endpoint = a;
            continue;
        }
        if (strcmp(a, "--") == 0) {
            rest = 1;
            continue;
        }
        const struct api_flag *f;
        const char *value = NULL;
        if (a[1] == '-') {
            size_t n = strcspn(a + 2, "=");
            f = api_long(a + 2, n);
            if (f && a[2 + n] == '=')
                value = a + 3 + n;
        } else {
            f = api_short(a[1]);
            if (f && a[2] != '\0') {
                if (!f->takes_value)
                    return refuse(v, WHY_API_FLAG, "gh api", a, "(write short flags one per argument)");
                value = a + 2;
            }
        }
        if (!f)
            return refuse(v, WHY_API_FLAG, "gh api", a, NULL);
        if (f->takes_value && !value) {
            if (i + 1 >= argc)
                return refuse(v, WHY_MISSING, "gh api", a, NULL);
            value = argv[++i];
        }
        if (strcmp(f->lng, "hostname") == 0 && strcmp(value, "github.com") != 0)
            return refuse(v, WHY_HOST, "gh api --hostname", value, NULL);
        if (strcmp(f->lng, "method") == 0 && !word_is(value, strlen(value), "get"))
            writes = 1;
        if (strcmp(f->lng, "field") == 0 || strcmp(f->lng, "raw-field") == 0 || strcmp(f->lng, "input") == 0)
            writes = 1;
    }
    if (endpoint && !endpoint_ok(endpoint))
        return refuse(v, WHY_API_ENDPOINT, "gh api", endpoint, NULL);
    if (paranoid && writes)
        return refuse(v, WHY_API_WRITE, "gh api (write request)", NULL, NULL);
    return 1;
}

/* ------------------------------------------------------------------ the command path */

/* repo clone/fork and gist clone hand what follows "--" to git clone */
static int passes_git_options(const struct cmd *cmd, const struct sub *sub, int start, int argc,
                              char *const argv[])
{
    if (!sub)
        return 0;
    int repo = strcmp(cmd->name, "repo") == 0, gist = strcmp(cmd->name, "gist") == 0;
    int clone = strcmp(sub->name, "clone") == 0, fork = strcmp(sub->name, "fork") == 0;
    if (!((repo && (clone || fork)) || (gist && clone)))
        return 0;
    for (int i = start; i < argc; i++)
        if (strcmp(argv[i], "--") == 0)
            return 1;
    return 0;
}

/* --NAME, --NAME=..., or (short != 0) a single-dash word containing SHORT, in any cluster */
static int has_flag(int start, int argc, char *const argv[], const char *name, char shrt)
{
    size_t n = strlen(name);
    for (int i = start; i < argc; i++) {
        const char *a = argv[i];
        if (a[0] == '-' && a[1] == '-' && strncmp(a + 2, name, n) == 0 && (a[2 + n] == '\0' || a[2 + n] == '='))
            return 1;
        if (shrt && a[0] == '-' && a[1] != '-' && strchr(a + 1, shrt))
            return 1;
    }
    return 0;
}

/* auth status -t / --show-token: the token on stdout */
static int shows_token(int start, int argc, char *const argv[])
{
    for (int i = start; i < argc; i++) {
        const char *a = argv[i];
        if (strncmp(a, "--show-token", 12) == 0 && (a[12] == '\0' || a[12] == '='))
            return 1;
        if (a[0] == '-' && a[1] != '-' && strchr(a, 't'))
            return 1;
    }
    return 0;
}

void gh_policy_check(int argc, char *const argv[], int paranoid, struct gh_verdict *v)
{
    v->allowed = 0;
    v->what[0] = '\0';
    v->why = NULL;

    const struct cmd *cmd = NULL;
    const struct sub *sub = NULL;
    const char *cmd_word = NULL, *sub_word = NULL;
    int i = 1;
    for (; i < argc; i++) {
        const char *a = argv[i];
        if (odd_word(a))
            return (void)refuse(v, WHY_ODD, a[0] ? a : "(empty argument)", NULL, NULL);
        if (a[0] != '-') {
            if (!cmd) {
                cmd = find_cmd(a);
                cmd_word = a;
                if (!cmd)
                    return (void)refuse(v, WHY_UNKNOWN, "gh", a, NULL);
                if (!cmd->subs) {
                    i++;
                    break;
                }
                continue;
            }
            sub = find_sub(cmd, a);
            sub_word = a;
            if (!sub && cmd->rule != ALWAYS)
                return (void)refuse(v, WHY_UNKNOWN_SUB, "gh", cmd_word, a);
            i++;
            break;
        }
        if (a[1] == '-') {
            const char *name = a + 2;
            size_t n = strcspn(name, "=");
            if ((n == 4 && strncmp(name, "help", 4) == 0) || (!cmd && n == 7 && strncmp(name, "version", 7) == 0))
                continue;
            if (n == 4 && strncmp(name, "repo", 4) == 0) {
                if (name[n] == '\0' && ++i >= argc)
                    return (void)refuse(v, WHY_MISSING, a, NULL, NULL);
                continue;
            }
            return (void)refuse(v, WHY_PREFLAG, a, NULL, NULL);
        }
        if (a[1] == 'R') {
            if (a[2] == '\0' && ++i >= argc)
                return (void)refuse(v, WHY_MISSING, a, NULL, NULL);
            continue;
        }
        return (void)refuse(v, WHY_PREFLAG, a, NULL, NULL);
    }

    if (cmd && cmd->rule == ALWAYS)
        return (void)refuse(v, cmd->why, "gh", cmd_word, NULL);
    if (sub && sub->rule == ALWAYS)
        return (void)refuse(v, sub->why, "gh", cmd_word, sub_word);
    if (sub && strcmp(cmd->name, "auth") == 0 && strcmp(sub->name, "status") == 0 && shows_token(i, argc, argv))
        return (void)refuse(v, WHY_TOKEN, "gh auth status --show-token", NULL, NULL);
    /* git submodule is a shell script: the readable, dumpable sh would hold the token */
    if (has_flag(i, argc, argv, "recurse-submodules", 0))
        return (void)refuse(v, WHY_SUBMODULES, "gh", cmd_word, "--recurse-submodules");
    if (paranoid && cmd && cmd->rule == PARANOID)
        return (void)refuse(v, cmd->why, "gh", cmd_word, NULL);
    if (paranoid && sub && sub->rule == PARANOID)
        return (void)refuse(v, sub->why, "gh", cmd_word, sub_word);
    /* pr close -d checks out the default branch with the token in git's environment (filters run) */
    if (paranoid && sub && strcmp(cmd->name, "pr") == 0 && strcmp(sub->name, "close") == 0 &&
        has_flag(i, argc, argv, "delete-branch", 'd'))
        return (void)refuse(v, WHY_GIT, "gh pr close --delete-branch", NULL, NULL);
    if (passes_git_options(cmd, sub, i, argc, argv))
        return (void)refuse(v, WHY_GIT_ARGS, "gh", cmd_word, "... --");
    if (!check_every_argument(argc, argv, v))
        return;
    if (cmd && strcmp(cmd->name, "api") == 0 && !check_api(i, argc, argv, paranoid, v))
        return;
    v->allowed = 1;
}
