/*
 * fuzz.h - what the fuzz harnesses of tests/fuzz/ share.
 *
 * Each harness fuzz_SURFACE.c defines its entry with
 *     LDM_FUZZ_TARGET(SURFACE) { ... data, size ... return 0; }
 * which is the function `int fuzz_SURFACE(const uint8_t *data, size_t size)`.
 * Built with -DLDM_LIBFUZZER (make fuzz: clang -fsanitize=fuzzer,...) the
 * same file also defines LLVMFuzzerTestOneInput calling it; built without
 * (gcc, the Check suite) it is a plain function that tests/test_fuzz_regress.c
 * calls on every file of tests/fuzz/regress/SURFACE/ and
 * tests/fuzz/corpus/SURFACE/.
 *
 * LDM_FUZZ_ROOT is the repository (the harness reads the config files, the
 * graph library and the CLIP vocabulary from there); the Makefile defines it.
 */
#ifndef LDM_FUZZ_H
#define LDM_FUZZ_H

#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#ifndef LDM_FUZZ_ROOT
#define LDM_FUZZ_ROOT "."
#endif

#ifdef LDM_LIBFUZZER
#define LDM_FUZZ_TARGET(name)                                                                                        \
    int fuzz_##name(const uint8_t *data, size_t size);                                                               \
    int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);                                                    \
    int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) { return fuzz_##name(data, size); }                 \
    int fuzz_##name(const uint8_t *data, size_t size)
#else
#define LDM_FUZZ_TARGET(name)                                                                                        \
    int fuzz_##name(const uint8_t *data, size_t size);                                                               \
    int fuzz_##name(const uint8_t *data, size_t size)
#endif

/* The input as a NUL-terminated string (malloc'd; embedded NULs cut it). */
static inline char *fuzz_cstr(const uint8_t *data, size_t size) {
    char *s = malloc(size + 1);
    if (!s) abort();
    memcpy(s, data, size);
    s[size] = 0;
    return s;
}

/* The input as a file the real readers open by path: an in-memory file
 * (memfd), rewritten on every call, named /proc/self/fd/N. `tag` names the
 * file (one per tag, at most 4). Returns the path (static storage). */
static inline const char *fuzz_file(const char *tag, const uint8_t *data, size_t size) {
    static struct { const char *tag; int fd; char path[64]; } files[4];
    int k = 0;
    while (k < 4 && files[k].tag && strcmp(files[k].tag, tag)) k++;
    if (k == 4) abort();
    if (!files[k].tag) {
        files[k].fd = memfd_create(tag, MFD_CLOEXEC);
        if (files[k].fd < 0) abort();
        files[k].tag = tag;
        snprintf(files[k].path, sizeof files[k].path, "/proc/self/fd/%d", files[k].fd);
    }
    int fd = files[k].fd;
    if (ftruncate(fd, 0) != 0 || lseek(fd, 0, SEEK_SET) != 0) abort();
    for (size_t off = 0; off < size;) {
        ssize_t w = write(fd, data + off, size - off);
        if (w <= 0) abort();
        off += (size_t)w;
    }
    return files[k].path;
}

#endif
