/* Compiled as C99 with -Wall -Wextra -Werror -pedantic: proves mla.h is plain C. Also a smoke
 * test of the ABI from C: versions, status names, a context, its description. */
#include <stdio.h>
#include <string.h>

#include "mla.h"

static int failures = 0;

static void check(int cond, const char* what) {
    if (!cond) {
        printf("FAILED: %s (last error: %s)\n", what, mla_last_error());
        ++failures;
    }
}

int main(void) {
    mla_context_options options;
    mla_context* context = NULL;
    char desc[128];
    int32_t backend = -1;
    mla_config config;
    double scale = 0.0;

    check(mla_version() == MLA_VERSION_NUMBER, "mla_version() == MLA_VERSION_NUMBER");
    check(mla_abi_version() == MLA_ABI_VERSION, "mla_abi_version() == MLA_ABI_VERSION");
    check(strcmp(mla_status_string(MLA_OK), "MLA_OK") == 0, "status string of MLA_OK");
    check(strcmp(mla_status_string(MLA_ERROR_CACHE_FULL), "MLA_ERROR_CACHE_FULL") == 0, "status string of CACHE_FULL");
    check(strcmp(mla_status_string(1000), "MLA_ERROR_UNKNOWN") == 0, "status string of an unknown value");

    check(mla_config_init(&config) == MLA_OK, "mla_config_init");
    check(mla_config_softmax_scale(&config, &scale) == MLA_OK && scale > 0.0, "mla_config_softmax_scale");
    check(mla_context_options_init(&options) == MLA_OK, "mla_context_options_init");
    options.num_threads = 1;
    check(mla_context_create(&options, &context) == MLA_OK && context != NULL, "mla_context_create");
    if (context != NULL) {
        check(mla_context_describe(context, desc, sizeof desc) == MLA_OK, "mla_context_describe");
        check(strncmp(desc, "cpu", 3) == 0, "description starts with cpu");
        check(mla_context_backend(context, &backend) == MLA_OK && backend == MLA_BACKEND_CPU, "mla_context_backend");
        printf("context: %s\n", desc);
    }
    mla_context_destroy(context);
    check(mla_config_validate(NULL) == MLA_ERROR_INVALID_ARGUMENT, "validate(NULL) fails");
    check(strlen(mla_last_error()) > 0, "last error set after a failure");
    printf("%s: %d failure(s)\n", failures ? "FAILED" : "PASSED", failures);
    return failures ? 1 : 0;
}
