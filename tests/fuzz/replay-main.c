/* SPDX-License-Identifier: MIT */
/* A main() for the fuzz targets in builds without libFuzzer (gcc): runs the target once on each
 * file named on the command line, as `fuzz-TARGET -runs=0 FILE...` does, so that the seeds and
 * regressions replay in every build, under valgrind too. Arguments starting with '-' (libFuzzer's
 * options) are ignored. */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <glib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int main(int argc, char *argv[]) {
        unsigned n = 0;

        for (int i = 1; i < argc; i++) {
                g_autoptr(GError) error = NULL;
                g_autofree char *data = NULL;
                gsize size = 0;

                if (argv[i][0] == '-')
                        continue;
                if (!g_file_get_contents(argv[i], &data, &size, &error)) {
                        fprintf(stderr, "%s: %s\n", argv[0], error->message);
                        return EXIT_FAILURE;
                }
                (void) LLVMFuzzerTestOneInput((const uint8_t *) data, size);
                n++;
        }
        printf("replayed %u input(s)\n", n);
        return EXIT_SUCCESS;
}
