// A tiny test harness for the C-level suites: named test functions, non-fatal CHECKs, fatal
// REQUIREs, a summary line, and a non-zero exit status on any failure.
//
//   MLA_TEST(cache_roundtrip) { CHECK_EQ(1 + 1, 2); }
//   int main(int argc, char** argv) { return mla_test::run_all(argc, argv); }
//
// A test argument on the command line runs only the tests whose name contains it.
#pragma once

#include <atomic>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <exception>
#include <sstream>
#include <string>
#include <vector>

#include "mla.h"

namespace mla_test {

struct TestCase {
    const char* name;
    void (*fn)();
};

inline std::vector<TestCase>& registry() {
    static std::vector<TestCase> r;
    return r;
}

struct Registrar {
    Registrar(const char* name, void (*fn)()) { registry().push_back({name, fn}); }
};

// Failures of the running test (atomic: a test may check from several threads).
inline std::atomic<int>& current_failures() {
    static std::atomic<int> n{0};
    return n;
}
inline std::atomic<int>& total_checks() {
    static std::atomic<int> n{0};
    return n;
}

struct FatalFailure {};

inline void fail(const char* file, int line, const std::string& msg) {
    const int n = ++current_failures();
    if (n <= 20) std::printf("    %s:%d: %s\n", file, line, msg.c_str());
    if (n == 20) std::printf("    (further failures of this test not shown)\n");
}

template <typename A, typename B>
std::string describe_pair(const char* ea, const char* eb, const A& a, const B& b) {
    std::ostringstream os;
    os << ea << " == " << eb << " failed: " << a << " vs " << b;
    return os.str();
}

inline std::string status_text(mla_status s) {
    return std::string(mla_status_string(s)) + " (" + std::to_string(s) + ")";
}

inline int run_all(int argc, char** argv) {
    const char* filter = argc > 1 ? argv[1] : nullptr;
    int run = 0, failed = 0;
    std::vector<std::string> failed_names;
    for (const TestCase& t : registry()) {
        if (filter && !std::strstr(t.name, filter)) continue;
        ++run;
        current_failures() = 0;
        std::printf("[ RUN  ] %s\n", t.name);
        std::fflush(stdout);
        try {
            t.fn();
        } catch (const FatalFailure&) {
            // already reported
        } catch (const std::exception& e) {
            fail(__FILE__, __LINE__, std::string("unexpected exception: ") + e.what());
        }
        if (current_failures()) {
            ++failed;
            failed_names.push_back(t.name);
            std::printf("[ FAIL ] %s (%d failed checks)\n", t.name, current_failures().load());
        } else {
            std::printf("[  OK  ] %s\n", t.name);
        }
        std::fflush(stdout);
    }
    if (run == 0) {
        std::printf("no test matches '%s'\n", filter ? filter : "");
        return 2;
    }
    std::printf("%s: %d tests, %d passed, %d failed, %d checks\n", failed ? "FAILED" : "PASSED", run, run - failed,
                failed, total_checks().load());
    for (const std::string& n : failed_names) std::printf("  failed: %s\n", n.c_str());
    return failed ? 1 : 0;
}

}  // namespace mla_test

#define MLA_TEST(name)                                                   \
    static void name();                                                  \
    static mla_test::Registrar mla_test_registrar_##name(#name, &name);  \
    static void name()

#define MLA_CHECK_IMPL(cond, msg, fatal)                                          \
    do {                                                                          \
        ++mla_test::total_checks();                                               \
        if (!(cond)) {                                                            \
            mla_test::fail(__FILE__, __LINE__, (msg));                            \
            if (fatal) throw mla_test::FatalFailure();                            \
        }                                                                         \
    } while (0)

#define CHECK(cond) MLA_CHECK_IMPL(cond, std::string("CHECK(" #cond ") failed"), false)
#define REQUIRE(cond) MLA_CHECK_IMPL(cond, std::string("REQUIRE(" #cond ") failed"), true)
#define CHECK_MSG(cond, msg) MLA_CHECK_IMPL(cond, std::string("CHECK(" #cond ") failed: ") + (msg), false)
#define CHECK_EQ(a, b)                                                                    \
    do {                                                                                  \
        const auto& mla_a_ = (a);                                                         \
        const auto& mla_b_ = (b);                                                         \
        MLA_CHECK_IMPL(mla_a_ == mla_b_, mla_test::describe_pair(#a, #b, mla_a_, mla_b_), false); \
    } while (0)
// A value against a named tolerance: CHECK_LE_TOL("out rel err", err, 1e-4). NaN fails.
#define CHECK_LE_TOL(what, value, tol)                                                             \
    do {                                                                                           \
        const double mla_v_ = (value);                                                             \
        const double mla_t_ = (tol);                                                               \
        char mla_buf_[256];                                                                        \
        std::snprintf(mla_buf_, sizeof mla_buf_, "%s = %.3e exceeds %.1e", std::string(what).c_str(), mla_v_, mla_t_); \
        MLA_CHECK_IMPL(mla_v_ <= mla_t_, std::string(mla_buf_), false);                            \
    } while (0)
// A call's status: CHECK_STATUS(mla_x(...), MLA_OK) prints the library's message on mismatch.
#define MLA_STATUS_IMPL(expr, want, fatal)                                                              \
    do {                                                                                                \
        const mla_status mla_got_ = (expr);                                                             \
        const mla_status mla_want_ = (want);                                                            \
        MLA_CHECK_IMPL(mla_got_ == mla_want_,                                                           \
                       std::string(#expr) + " returned " + mla_test::status_text(mla_got_) + ", expected " + \
                           mla_test::status_text(mla_want_) + "; last error: \"" + mla_last_error() + "\"", \
                       fatal);                                                                          \
    } while (0)
#define CHECK_STATUS(expr, want) MLA_STATUS_IMPL(expr, want, false)
#define REQUIRE_OK(expr) MLA_STATUS_IMPL(expr, MLA_OK, true)
