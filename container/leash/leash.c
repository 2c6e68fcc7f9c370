/*
 * leash -- run a session's command as a child and end it when the session's client is gone.
 *
 * Usage:  leash [--tty] [--hup] COMMAND [ARGS...]
 *
 * pimagic starts every notebook's pi (and the CLI's terminal sessions) through this. The idle
 * supervisor counts processes whose parent is outside the container (parent pid 0) as attached
 * sessions; with the leash that process is always this small program, never code the agent can
 * influence:
 *   - a command that stops reading its input (pi blocked on a FIFO the agent put in place of its
 *     session file) no longer keeps the sandbox alive: with --hup, when stdin hangs up (the
 *     kernel detached or died) the child is killed and the leash exits;
 *   - a CLONE_PARENT child of the command (from a shell the agent primed) gets the leash as its
 *     parent, not pid 0.
 * --tty (an exec with a terminal): first of all make the terminal exclusive (TIOCEXCL: any further
 * open() of it fails with EBUSY without CAP_SYS_ADMIN, /proc/<pid>/fd and /dev/tty included), then
 * print TTY_MARK, which the CLI waits for (and swallows) before it lets the agent's processes run;
 * then wait for one byte from the CLI (sent once they run again) before starting the program.
 * Installed execute-only (0711): a process exec'ing a binary it cannot read is not dumpable, so
 * the agent's uid cannot rewrite this loop through /proc/<pid>/mem.
 * Exit status: the child's, 128+signal if it was killed by one, 129 after a hang-up, 127 if the
 * command could not start.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/wait.h>
#include <termios.h>
#include <unistd.h>

#define TTY_MARK "\033]pimagic-tty-locked\007"

static int status_of(int st)
{
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

int main(int argc, char **argv)
{
    int hup = 0, tty = 0;
    char **cmd = argv + (argc > 0);
    for (; *cmd && strncmp(*cmd, "--", 2) == 0; cmd++) {
        if (strcmp(*cmd, "--hup") == 0)
            hup = 1;
        else if (strcmp(*cmd, "--tty") == 0)
            tty = 1;
        else
            break;
    }
    if (!*cmd) {
        fprintf(stderr, "usage: leash [--tty] [--hup] COMMAND [ARGS...]\n");
        return 2;
    }
    if (tty) {
        if (ioctl(0, TIOCEXCL) != 0) {
            fprintf(stderr, "leash: cannot make the terminal exclusive: %s\n", strerror(errno));
            return 126;
        }
        if (write(1, TTY_MARK, sizeof TTY_MARK - 1) != (ssize_t)(sizeof TTY_MARK - 1))
            return 126;
        /* Wait for the CLI's go (one byte) before starting the program: the CLI first lets the
         * agent's processes run again, and that SIGCONT must not reach a shell still starting up. */
        char go;
        ssize_t n;
        while ((n = read(0, &go, 1)) < 0 && errno == EINTR)
            ;
        if (n != 1)
            return 126;
    }
    pid_t child = fork();
    if (child < 0) {
        perror("leash: fork");
        return 127;
    }
    if (child == 0) {
        execvp(cmd[0], cmd);
        fprintf(stderr, "leash: cannot run %s: %s\n", cmd[0], strerror(errno));
        _exit(127);
    }
    /* Only the leash ignores these (set after the fork: ignored signals survive exec). */
    signal(SIGINT, SIG_IGN);
    signal(SIGQUIT, SIG_IGN);
    signal(SIGTSTP, SIG_IGN);
    signal(SIGTTIN, SIG_IGN);
    signal(SIGTTOU, SIG_IGN);
    for (;;) {
        int st;
        pid_t done = waitpid(child, &st, WNOHANG);
        if (done == child)
            return status_of(st);
        if (done < 0 && errno != EINTR) {
            perror("leash: waitpid");
            return 127;
        }
        /* events = 0: never read the child's input; a hang-up is reported anyway */
        struct pollfd p = {.fd = 0, .events = 0, .revents = 0};
        int n = poll(&p, 1, 250);
        if (hup && n > 0 && (p.revents & (POLLHUP | POLLERR | POLLNVAL))) {
            kill(child, SIGKILL);
            waitpid(child, &st, 0);
            return 129;
        }
        if (n > 0 && (p.revents & POLLNVAL))
            usleep(250000); /* no stdin at all: poll returns at once; just wait for the child */
    }
}
