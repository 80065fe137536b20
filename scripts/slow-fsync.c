/* A slower disk for benchmarks: fdatasync and fsync as usual, then 5 ms of sleep, as on a
 * spinning disk or a network volume. Build and use (BENCHMARKS.md, "Session 11"):
 *
 *   gcc -shared -fPIC -O2 -o /tmp/slow-fsync.so scripts/slow-fsync.c -ldl
 *   LD_PRELOAD=/tmp/slow-fsync.so target/release/limecached ...
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <unistd.h>

#define EXTRA_US 5000

int fdatasync(int fd) {
    static int (*real)(int);
    if (!real) real = (int (*)(int))dlsym(RTLD_NEXT, "fdatasync");
    int result = real(fd);
    usleep(EXTRA_US);
    return result;
}

int fsync(int fd) {
    static int (*real)(int);
    if (!real) real = (int (*)(int))dlsym(RTLD_NEXT, "fsync");
    int result = real(fd);
    usleep(EXTRA_US);
    return result;
}
