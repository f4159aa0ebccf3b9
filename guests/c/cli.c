/* A small WASI command-line program for pier's `pier run` tests.
 *
 * It prints its arguments, then acts on these flags in order:
 *   --env NAME     print NAME's value (or "<unset>")
 *   --read PATH    print the file's contents (or the error)
 *   --write PATH   write "written by cli\n" to PATH
 *   --stdin        copy stdin to stdout
 *   --trap         trap (unreachable)
 *   --exit N       exit with N (default 3)
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int cat(FILE *in) {
    char buf[4096];
    size_t n;
    while ((n = fread(buf, 1, sizeof buf, in)) > 0) fwrite(buf, 1, n, stdout);
    return ferror(in) ? -1 : 0;
}

int main(int argc, char **argv) {
    int code = 3;
    printf("argc=%d\n", argc);
    for (int i = 1; i < argc; i++) printf("argv[%d]=%s\n", i, argv[i]);
    for (int i = 1; i < argc; i++) {
        const char *next = i + 1 < argc ? argv[i + 1] : "";
        if (strcmp(argv[i], "--env") == 0) {
            const char *v = getenv(next);
            printf("env %s=%s\n", next, v ? v : "<unset>");
            i++;
        } else if (strcmp(argv[i], "--read") == 0) {
            FILE *f = fopen(next, "r");
            if (!f) {
                printf("read %s: error: %s\n", next, strerror(errno));
            } else {
                printf("read %s: ", next);
                cat(f);
                fclose(f);
            }
            i++;
        } else if (strcmp(argv[i], "--write") == 0) {
            FILE *f = fopen(next, "w");
            if (!f || fputs("written by cli\n", f) < 0 || fclose(f) != 0)
                printf("write %s: error: %s\n", next, strerror(errno));
            else
                printf("write %s: ok\n", next);
            i++;
        } else if (strcmp(argv[i], "--stdin") == 0) {
            printf("stdin: ");
            cat(stdin);
        } else if (strcmp(argv[i], "--trap") == 0) {
            fflush(stdout);
            __builtin_trap();
        } else if (strcmp(argv[i], "--exit") == 0) {
            code = atoi(next);
            i++;
        }
    }
    fflush(stdout);
    fprintf(stderr, "cli: exiting with %d\n", code);
    return code;
}
