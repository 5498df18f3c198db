/*
 * The real node's sandbox ("pause") program, and a tiny multi-call tool for real-node tests, so test
 * images need no shell or busybox. Built static (`cc -static -Os -s`) by `test_images::pause_program`
 * for the `pause` image of `cargo xtask image` and the real node's sandbox image.
 *
 *   pause                      sleep until SIGTERM/SIGINT, reaping children (the pod sandbox's job)
 *   pause write FILE TEXT      write TEXT and a newline to FILE, then exit
 *   pause cat FILE...          print the files and exit
 *   pause serve-file FILE      print FILE, then sleep as `pause` does (a main container with logs)
 *   pause connect ENV_HOST PORT
 *                              TCP-connect to the address in environment variable ENV_HOST, port PORT, print
 *                              "connected <addr>:<port>" or the error; exit 0 or 1
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

static void stop(int sig) { (void)sig; _exit(0); }

static void reap(int sig) {
    (void)sig;
    while (waitpid(-1, NULL, WNOHANG) > 0) {
    }
}

/* Before anything is printed: a stop right after the output must not find the default action (fatal, or
 * ignored as PID 1). */
static void catch_signals(void) {
    signal(SIGTERM, stop);
    signal(SIGINT, stop);
    signal(SIGCHLD, reap);
}

static int pause_forever(void) {
    catch_signals();
    for (;;) pause();
    return 0;
}

static int cat(const char *path) {
    FILE *f = fopen(path, "r");
    if (!f) {
        fprintf(stderr, "cannot open %s: %s\n", path, strerror(errno));
        return 1;
    }
    char buf[4096];
    size_t n;
    while ((n = fread(buf, 1, sizeof buf, f)) > 0) fwrite(buf, 1, n, stdout);
    fclose(f);
    fflush(stdout);
    return 0;
}

static int connect_to(const char *env, const char *port) {
    const char *host = getenv(env);
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((unsigned short)atoi(port))};
    if (!host || inet_pton(AF_INET, host, &addr.sin_addr) != 1) {
        fprintf(stderr, "environment variable %s is not an IPv4 address: %s\n", env, host ? host : "(unset)");
        return 1;
    }
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0 || connect(fd, (struct sockaddr *)&addr, sizeof addr) != 0) {
        printf("cannot connect to %s:%s: %s\n", host, port, strerror(errno));
        return 1;
    }
    printf("connected %s:%s\n", host, port);
    close(fd);
    return 0;
}

int main(int argc, char **argv) {
    if (argc == 1) return pause_forever();
    if (argc == 4 && strcmp(argv[1], "write") == 0) {
        FILE *f = fopen(argv[2], "w");
        if (!f || fprintf(f, "%s\n", argv[3]) < 0 || fclose(f) != 0) {
            fprintf(stderr, "cannot write %s: %s\n", argv[2], strerror(errno));
            return 1;
        }
        return 0;
    }
    if (argc >= 3 && strcmp(argv[1], "cat") == 0) {
        int failed = 0;
        for (int i = 2; i < argc; i++) failed |= cat(argv[i]);
        return failed;
    }
    if (argc == 3 && strcmp(argv[1], "serve-file") == 0) {
        catch_signals();
        if (cat(argv[2]) != 0) return 1;
        return pause_forever();
    }
    if (argc == 4 && strcmp(argv[1], "connect") == 0) return connect_to(argv[2], argv[3]);
    fprintf(stderr, "usage: pause [write FILE TEXT | cat FILE... | serve-file FILE | connect ENV_HOST PORT]\n");
    return 2;
}
