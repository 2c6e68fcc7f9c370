/*
 * gh-no-spawn -- what gh and git get as pager, browser, editor, ssh and askpass.
 *
 * Installed execute-only (0711): a process that execs a file its uid cannot read is not
 * dumpable, so the token in its inherited environment stays out of the agent's reach
 * for the instant it runs. It starts nothing and fails.
 */
#include <stdio.h>

int main(void)
{
    fputs("gh-vault: no pager, browser, editor or ssh in this sandbox\n", stderr);
    return 1;
}
