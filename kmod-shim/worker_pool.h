// A fixed pool of threads running jobs from a bounded queue. submit() blocks while the queue is
// full, which is how a fast client is slowed down instead of growing memory without bound.
#pragma once

#include <condition_variable>
#include <deque>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace shim {

class WorkerPool {
 public:
  WorkerPool(unsigned threads, size_t max_queued) : max_(max_queued) {
    for (unsigned i = 0; i < threads; ++i) threads_.emplace_back([this] { run(); });
  }
  ~WorkerPool() {
    {
      std::lock_guard lk(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    for (auto& t : threads_) t.join();
  }
  void submit(std::function<void()> job) {
    std::unique_lock lk(mu_);
    room_.wait(lk, [&] { return jobs_.size() < max_; });
    jobs_.push_back(std::move(job));
    cv_.notify_one();
  }

 private:
  void run() {
    for (;;) {
      std::function<void()> job;
      {
        std::unique_lock lk(mu_);
        cv_.wait(lk, [&] { return stop_ || !jobs_.empty(); });
        if (jobs_.empty()) return;
        job = std::move(jobs_.front());
        jobs_.pop_front();
      }
      room_.notify_one();
      job();
    }
  }
  size_t max_;
  std::mutex mu_;
  std::condition_variable cv_, room_;
  std::deque<std::function<void()>> jobs_;
  bool stop_ = false;
  std::vector<std::thread> threads_;
};

}  // namespace shim
