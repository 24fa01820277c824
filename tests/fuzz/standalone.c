/*
** standalone.c — runs a fuzz target over files and directories of inputs, without
** libFuzzer: how the corpus (seeds and every crash found, kept as regressions) runs in
** the normal and the sanitizer builds' test suites.
*/
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int run_file(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL) return perror(path), 1;
    size_t cap = 1 << 16, len = 0, n;
    uint8_t *buf = malloc(cap);
    while (buf && (n = fread(buf + len, 1, cap - len, f)) > 0) {
        len += n;
        if (len == cap) buf = realloc(buf, cap *= 2);
    }
    fclose(f);
    if (buf == NULL) return fprintf(stderr, "%s: not enough memory\n", path), 1;
    LLVMFuzzerTestOneInput(buf, len);
    free(buf);
    return 0;
}

int main(int argc, char **argv)
{
    int bad = 0, inputs = 0;
    for (int i = 1; i < argc; i++) {
        struct stat st;
        if (stat(argv[i], &st) < 0) return perror(argv[i]), 1;
        if (!S_ISDIR(st.st_mode)) {
            bad |= run_file(argv[i]), inputs++;
            continue;
        }
        struct dirent **names;
        int n = scandir(argv[i], &names, NULL, alphasort);
        if (n < 0) return perror(argv[i]), 1;
        for (int j = 0; j < n; j++) {
            char path[4096];
            snprintf(path, sizeof path, "%s/%s", argv[i], names[j]->d_name);
            struct stat fst;
            if (names[j]->d_name[0] != '.' && stat(path, &fst) == 0 && S_ISREG(fst.st_mode))
                bad |= run_file(path), inputs++;
            free(names[j]);
        }
        free(names);
    }
    printf("%d inputs, %s\n", inputs, bad ? "errors" : "no crash");
    return bad || inputs == 0;
}
