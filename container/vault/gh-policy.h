/*
 * gh-policy -- which gh command lines the vault runs with the GitHub token.
 *
 * Pure (no I/O, no allocation): the setuid vault calls it on its own argv before it
 * reads the token, and tests compile it on the host with a small driver.
 */
#ifndef GH_POLICY_H
#define GH_POLICY_H

#define GH_POLICY_WHAT_MAX 96

struct gh_verdict {
    int allowed;
    char what[GH_POLICY_WHAT_MAX]; /* what is refused: printable ASCII, never the caller's raw bytes */
    const char *why;               /* a fixed sentence */
};

/* Decide for `gh argv[1..argc-1]`; paranoid != 0 applies paranoid mode. */
void gh_policy_check(int argc, char *const argv[], int paranoid, struct gh_verdict *v);

#endif
