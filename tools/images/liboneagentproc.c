/*
 * A stand-in for the OneAgent code module's process agent, `agent/lib64/liboneagentproc.so`, served by the
 * fake tenant in its PaaS archives (`--agent-library`). Built as a shared library by
 * `test_images::agent_library` (`cc -shared -fPIC -Os -s`).
 *
 * When a process loads it (through /etc/ld.so.preload or LD_PRELOAD, as the injected pod does), it leaves
 * evidence and nothing else:
 *   - it appends "liboneagentproc loaded pid=<pid> exe=<path>" to $DT_AGENT_EVIDENCE, default
 *     /tmp/oneagent-loaded (best effort: a read-only or missing /tmp is fine);
 *   - the library itself shows up in /proc/<pid>/maps, which the sample app prints.
 * It does not change the process's behaviour, output, signals or environment.
 */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

__attribute__((constructor)) static void oneagent_loaded(void) {
    const char *path = getenv("DT_AGENT_EVIDENCE");
    if (!path || !*path) path = "/tmp/oneagent-loaded";
    char exe[512];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    exe[n > 0 ? n : 0] = '\0';
    char line[640];
    int len = snprintf(line, sizeof line, "liboneagentproc loaded pid=%d exe=%s\n", (int)getpid(), exe);
    if (len <= 0) return;
    if (len >= (int)sizeof line) len = (int)sizeof line - 1;
    int fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0666);
    if (fd < 0) return;
    ssize_t ignored = write(fd, line, (size_t)len);
    (void)ignored;
    close(fd);
}

/* A symbol to look for with `nm -D`, and a way for a test to ask the library directly. */
const char *oneagent_fake_agent_version(void) { return "fake-liboneagentproc 1"; }
