// Compiled with -Wall -Wextra -Werror -pedantic as C++: mla.h is warning-free C++.
#include "mla.h"

#include <cstdio>

int main() {
    mla_config config;
    mla_status st = mla_config_init(&config);
    std::printf("%s\n", mla_status_string(st));
    return st == MLA_OK ? 0 : 1;
}
