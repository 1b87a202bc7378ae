// A small persistent thread pool (no OpenMP runtime: the library must not depend on libgomp).
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <thread>
#include <vector>

namespace mla::cpu {

class ThreadPool {
public:
    // num_threads >= 1 counts the calling thread: num_threads - 1 workers are started.
    explicit ThreadPool(int num_threads);
    ~ThreadPool();
    ThreadPool(const ThreadPool&) = delete;
    ThreadPool& operator=(const ThreadPool&) = delete;

    int size() const { return size_; }

    // Runs fn(task, worker) for task in [0, n_tasks), worker in [0, size()). Blocks until all are
    // done. When another thread is using the pool, runs everything inline on the caller as
    // worker 0 (so concurrent callers never wait on each other). fn must not throw. Does not
    // allocate (the callable is passed by reference, not wrapped in std::function).
    template <class F>
    void run(int64_t n_tasks, const F& fn) {
        run_impl(n_tasks, [](const void* f, int64_t t, int w) { (*static_cast<const F*>(f))(t, w); }, &fn);
    }

private:
    using Trampoline = void (*)(const void*, int64_t, int);
    void run_impl(int64_t n_tasks, Trampoline call, const void* fn);
    void worker_loop(int index);
    void work(int worker);

    int size_;
    std::vector<std::thread> threads_;
    std::mutex busy_;  // held by the thread that owns the pool for one run()
    std::mutex m_;
    std::condition_variable cv_start_, cv_done_;
    uint64_t generation_ = 0;
    bool stop_ = false;
    Trampoline call_ = nullptr;
    const void* fn_ = nullptr;
    int64_t n_tasks_ = 0;
    std::atomic<int64_t> next_{0};
    int active_ = 0;
};

}  // namespace mla::cpu
