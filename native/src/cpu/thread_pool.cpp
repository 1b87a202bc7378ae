#include "cpu/thread_pool.h"

namespace mla::cpu {

ThreadPool::ThreadPool(int num_threads) : size_(num_threads < 1 ? 1 : num_threads) {
    threads_.reserve(size_t(size_ - 1));
    try {
        for (int i = 1; i < size_; ++i) threads_.emplace_back([this, i] { worker_loop(i); });
    } catch (...) {
        {
            std::lock_guard<std::mutex> lk(m_);
            stop_ = true;
        }
        cv_start_.notify_all();
        for (auto& t : threads_) t.join();
        throw;
    }
}

ThreadPool::~ThreadPool() {
    {
        std::lock_guard<std::mutex> lk(m_);
        stop_ = true;
    }
    cv_start_.notify_all();
    for (auto& t : threads_) t.join();
}

void ThreadPool::work(int worker) {
    for (;;) {
        int64_t t = next_.fetch_add(1, std::memory_order_relaxed);
        if (t >= n_tasks_) break;
        call_(fn_, t, worker);
    }
}

void ThreadPool::worker_loop(int index) {
    uint64_t seen = 0;
    for (;;) {
        {
            std::unique_lock<std::mutex> lk(m_);
            cv_start_.wait(lk, [&] { return stop_ || generation_ != seen; });
            if (stop_) return;
            seen = generation_;
        }
        work(index);
        {
            std::lock_guard<std::mutex> lk(m_);
            if (--active_ == 0) cv_done_.notify_one();
        }
    }
}

void ThreadPool::run_impl(int64_t n_tasks, Trampoline call, const void* fn) {
    if (n_tasks <= 0) return;
    std::unique_lock<std::mutex> owner(busy_, std::try_to_lock);
    if (size_ == 1 || n_tasks == 1 || !owner.owns_lock()) {
        for (int64_t t = 0; t < n_tasks; ++t) call(fn, t, 0);
        return;
    }
    {
        std::lock_guard<std::mutex> lk(m_);
        call_ = call;
        fn_ = fn;
        n_tasks_ = n_tasks;
        next_.store(0, std::memory_order_relaxed);
        active_ = size_ - 1;
        ++generation_;
    }
    cv_start_.notify_all();
    work(0);
    std::unique_lock<std::mutex> lk(m_);
    cv_done_.wait(lk, [&] { return active_ == 0; });
    fn_ = nullptr;
}

}  // namespace mla::cpu
