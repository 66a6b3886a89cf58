/* The pod sandbox's process ("pause"): holds the pod's namespaces until it is told to stop. No
 * image can be pulled here, so the real node's harness builds this one (gcc -static) as the image
 * containerd's `sandbox_image` names. It exits on SIGINT or SIGTERM and reaps orphaned children. */
#include <signal.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

static void stop(int sig) { (void)sig; _exit(0); }

static void reap(int sig) {
    (void)sig;
    while (waitpid(-1, NULL, WNOHANG) > 0) {
    }
}

int main(void) {
    struct sigaction s = {0};
    s.sa_handler = stop;
    sigaction(SIGINT, &s, NULL);
    sigaction(SIGTERM, &s, NULL);
    s.sa_handler = reap;
    s.sa_flags = SA_NOCLDSTOP;
    sigaction(SIGCHLD, &s, NULL);
    for (;;) {
        pause();
    }
    return 0;
}
