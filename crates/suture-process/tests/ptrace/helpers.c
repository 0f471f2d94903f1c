/* Helpers for suture-process's ptrace tests.
 *
 *   helpers trace PID                 attach to PID with PTRACE_SEIZE, print "traced", then pass
 *                                     every signal through until killed or the tracee exits
 *   helpers sigqueue PID SIG VALUE    sigqueue(PID, SIG, VALUE), print "sent"
 */
#define _GNU_SOURCE
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ptrace.h>
#include <sys/wait.h>
#include <unistd.h>

int main(int argc, char **argv)
{
    setvbuf(stdout, 0, _IOLBF, 0);
    if (argc == 3 && strcmp(argv[1], "trace") == 0) {
        pid_t pid = atoi(argv[2]);
        if (ptrace(PTRACE_SEIZE, pid, 0, 0) != 0) {
            perror("PTRACE_SEIZE");
            return 1;
        }
        printf("traced\n");
        for (;;) {
            int st;
            if (waitpid(pid, &st, __WALL) < 0)
                return 0;
            if (WIFEXITED(st) || WIFSIGNALED(st))
                return 0;
            if (WIFSTOPPED(st)) {
                int sig = (st >> 16) ? 0 : WSTOPSIG(st);
                ptrace(PTRACE_CONT, pid, 0, sig);
            }
        }
    }
    if (argc == 5 && strcmp(argv[1], "sigqueue") == 0) {
        union sigval v;
        v.sival_int = atoi(argv[4]);
        if (sigqueue(atoi(argv[2]), atoi(argv[3]), v) != 0) {
            perror("sigqueue");
            return 1;
        }
        printf("sent\n");
        return 0;
    }
    return 2;
}
