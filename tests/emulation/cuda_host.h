// flashts — CUDA-on-CPU emulation harness: compile a csrc/*.cu file as HOST C++ and run its real kernels.
//
// Use (tests/test_cuda_emulation.py does this):
//   g++ -x c++ -std=c++17 -DFLASHTS_HOST_EMU -include tests/emulation/cuda_host.h -I<cuda include> -Icsrc ...
// or a wrapper .cpp that includes this header first and then the .cu file. The kernels must launch through
// FLASHTS_LAUNCH and declare dynamic shared memory with FLASHTS_DYNAMIC_SMEM (csrc/common.cuh); tensor-core and
// cp.async PTX only through the wrappers of common.cuh (their host branches run here).
//
// Execution model. A launch runs the blocks one after another (blockIdx in x-fastest order). Every thread of a
// block is a ucontext fiber with its own stack; fibers are switched cooperatively, only at __syncthreads(),
// __syncwarp() and the warp collectives (__shfl*_sync, __ballot_sync, ...). `__shared__` is `static`, so static
// shared arrays are shared by the fibers of a block (and reused by the next block, like real shared memory).
// Dynamic shared memory is filled with 0xFF bytes (NaN for float/half/bf16) before every block, and ends at a
// PROT_NONE guard page (a read or write past its end stops the process with a message).
// The fibers of a block run in a schedule set by flashts_emu_set_schedule (0 = thread 0 first, 1 = reversed,
// 2+ = a seeded shuffle); a kernel that depends on the order of threads between barriers gives different
// results under different schedules.
//
// Checks. A launch stops (the rest of the grid is skipped, cudaGetLastError() returns cudaErrorLaunchFailure and
// the message is printed to stderr and kept for flashts_emu_last_error()) when:
//   * threads of a block wait at __syncthreads() at different source lines (divergent barrier), or some
//     threads exited while others wait at a barrier;
//   * no thread can make progress (deadlock: e.g. a warp collective whose mask names an exited or a
//     diverged lane, a __syncthreads() inside a branch some threads skip);
//   * lanes of one collective disagree on the operation, or a shuffle reads a lane outside the mask;
//   * cp_async_16 gets a misaligned address;
//   * the launch configuration is invalid (block > 1024 threads, empty grid, dynamic shared memory above the
//     kernel's limit: 48 KB unless raised by cudaFuncSetAttribute, at most 227 KB like an H200).
// A SIGSEGV during a launch (out-of-bounds access, fiber stack overflow) prints the kernel, block and thread
// before the process dies.
//
// Not emulated: a thread that spins on memory written by another thread (no barrier between) never yields, so
// such a kernel hangs; memory ordering is sequential (one OS thread); static __shared__ arrays are not poisoned
// (they keep the previous block's values); global-memory bounds are not checked (the tests surround outputs
// with NaN canaries).
//
// Runtime: the few cudart calls the launchers use are stubs of an H200 (132 SMs, 227 KB opt-in shared memory,
// compute capability 9.0); streams are ignored and every launch is synchronous. cp_async_16 copies complete at
// cp_async_wait (the destination holds 0xFF bytes until then), which catches reads before the wait.
#pragma once
#ifndef FLASHTS_CUDA_HOST_H
#define FLASHTS_CUDA_HOST_H

#ifndef FLASHTS_HOST_EMU
#define FLASHTS_HOST_EMU 1
#endif

// The real cuda_runtime.h / mma.h are device-side headers: keep them out (their guards), use the plain C API.
#define __CUDA_RUNTIME_H__
#include <cuda_runtime_api.h>
#include <vector_functions.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <signal.h>
#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <map>
#include <random>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

// ------------------------------------------------------------------------------------- declaration specifiers
#undef __shared__
#define __shared__ static
#undef __constant__
#define __constant__
#undef __launch_bounds__
#define __launch_bounds__(...)
#undef __grid_constant__
#define __grid_constant__
#ifndef __forceinline__
#define __forceinline__ inline __attribute__((always_inline))
#endif

#define FLASHTS_EMU_EXPORT extern "C" __attribute__((visibility("default"), weak))

constexpr int warpSize = 32;

namespace flashts_emu {

// ------------------------------------------------------------------------------------------ runtime state

struct Copy16 {  // one cp_async_16 in flight: the source bytes are taken at issue, written at completion
    unsigned char* dst;
    unsigned char bytes[16];
};

enum class State : int { Runnable, Barrier, Warp, Done };
enum class Op : int { SyncWarp, Shfl, Ballot, Any, All, ReduceAdd, ReduceMin, ReduceMax, ReduceAnd, ReduceOr,
                      ReduceXor, MatchAny };

inline const char* op_name(Op op) {
    static const char* names[] = {"__syncwarp", "__shfl*_sync", "__ballot_sync", "__any_sync", "__all_sync",
                                  "__reduce_add_sync", "__reduce_min_sync", "__reduce_max_sync",
                                  "__reduce_and_sync", "__reduce_or_sync", "__reduce_xor_sync",
                                  "__match_any_sync"};
    return names[static_cast<int>(op)];
}

struct Fiber {
    ucontext_t ctx;
    unsigned char* stack = nullptr;  // usable stack (a PROT_NONE guard page lies below it)
    uint3 tid;
    int linear = 0, warp = 0, lane = 0;
    State state = State::Done;
    const char* file = "";
    int line = 0;
    int pred = 0;  // __syncthreads_count/and/or
    // warp collective
    Op op = Op::SyncWarp;
    unsigned mask = 0;
    uint64_t value = 0, result = 0;
    int src = 0;  // shuffle source lane (-1: own value)
    // cp.async
    std::vector<Copy16> copies;      // issued, not completed (in order)
    std::vector<size_t> group_ends;  // copies.size() at each cp_async_commit()
};

struct Ctx {
    // launch
    const char* kernel = "";
    const char* file = "";
    int line = 0;
    dim3 grid, block;
    std::function<void()> body;
    bool failed = false;
    std::string error;
    // block
    std::vector<Fiber> fibers;
    int n_threads = 0;
    Fiber* current = nullptr;
    ucontext_t sched;
    std::vector<int> order;
    int schedule = 0;
    // memory
    unsigned char* smem_region = nullptr;
    size_t smem_region_bytes = 0;
    unsigned char* smem = nullptr;
    size_t smem_bytes = 0;
    std::vector<std::vector<unsigned char>> warp_scratch;
    // runtime
    cudaError_t last_error = cudaSuccess;
    std::map<const void*, int> max_dynamic_smem;  // cudaFuncAttributeMaxDynamicSharedMemorySize per kernel
    std::string last_message;
    bool in_launch = false;
    size_t stack_bytes = 256 * 1024;
    struct sigaction old_segv, old_bus;
    std::vector<unsigned char> altstack;
};

inline Ctx& ctx() {
    static Ctx c;
    return c;
}

// The built-in variables of the fiber that runs (set by the scheduler before it resumes a fiber).
inline uint3 cur_threadIdx, cur_blockIdx;
inline dim3 cur_blockDim, cur_gridDim;

constexpr int kDeviceSmemDefault = 48 * 1024;
constexpr int kDeviceSmemOptin = 227 * 1024;  // H200 / H100: 232448 bytes per block (opt-in)
constexpr int kDeviceSms = 132;

inline std::string strprintf(const char* fmt, ...) {
    char buf[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    return buf;
}

inline std::string where(const Fiber& f) {
    return strprintf("block (%u,%u,%u) thread (%u,%u,%u)", cur_blockIdx.x, cur_blockIdx.y, cur_blockIdx.z, f.tid.x,
                     f.tid.y, f.tid.z);
}

// Stops the launch from inside a fiber (never returns) or from the scheduler.
[[noreturn]] inline void fail_in_fiber(const std::string& msg);

inline void record_failure(const std::string& msg) {
    Ctx& c = ctx();
    if (c.failed) return;
    c.failed = true;
    c.error = strprintf("flashts_emu: kernel %s (launched at %s:%d, grid (%u,%u,%u), block (%u,%u,%u)): %s", c.kernel,
                        c.file, c.line, c.grid.x, c.grid.y, c.grid.z, c.block.x, c.block.y, c.block.z, msg.c_str());
}

inline Fiber& self() {
    Fiber* f = ctx().current;
    if (!f) {
        fprintf(stderr, "flashts_emu: a device built-in was called outside a kernel launch\n");
        abort();
    }
    return *f;
}

// Back to the scheduler (the fiber's state says why).
inline void yield() {
    Ctx& c = ctx();
    Fiber* f = c.current;
    swapcontext(&f->ctx, &c.sched);
}

[[noreturn]] inline void fail_in_fiber(const std::string& msg) {
    record_failure(msg);
    Fiber& f = self();
    f.state = State::Done;
    yield();
    abort();  // never resumed
}

// ------------------------------------------------------------------------------------------- the scheduler

inline void fiber_entry() {
    Ctx& c = ctx();
    c.body();
    c.current->state = State::Done;
    swapcontext(&c.current->ctx, &c.sched);
}

inline void segv_handler(int sig, siginfo_t* info, void*) {
    Ctx& c = ctx();
    const unsigned char* addr = static_cast<const unsigned char*>(info->si_addr);
    const char* what = "an out-of-bounds access";
    if (c.smem && addr >= c.smem + c.smem_bytes && addr < c.smem_region + c.smem_region_bytes)
        what = "an access past the end of dynamic shared memory";
    if (c.current && addr < c.current->stack && addr >= c.current->stack - 2 * 4096)
        what = "a fiber stack overflow (raise FLASHTS_EMU_STACK_KB)";
    char buf[1024];
    int n = snprintf(buf, sizeof buf,
                     "\nflashts_emu: signal %d at address %p in kernel %s (launched at %s:%d), block (%u,%u,%u) "
                     "thread (%u,%u,%u): %s\n",
                     sig, info->si_addr, c.kernel, c.file, c.line, cur_blockIdx.x, cur_blockIdx.y, cur_blockIdx.z,
                     c.current ? c.current->tid.x : 0u, c.current ? c.current->tid.y : 0u,
                     c.current ? c.current->tid.z : 0u, what);
    if (n > 0) {
        ssize_t w = write(2, buf, static_cast<size_t>(n < (int)sizeof buf ? n : (int)sizeof buf - 1));
        (void)w;
    }
    signal(sig, SIG_DFL);
    raise(sig);
}

inline void ensure_fibers(int n) {
    Ctx& c = ctx();
    const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
    if (c.fibers.empty()) {  // the stack size is fixed when the first fiber is made
        if (const char* kb = getenv("FLASHTS_EMU_STACK_KB")) c.stack_bytes = static_cast<size_t>(atol(kb)) * 1024;
        c.stack_bytes = (c.stack_bytes + page - 1) / page * page;
    }
    while (static_cast<int>(c.fibers.size()) < n) {
        c.fibers.emplace_back();
        Fiber& f = c.fibers.back();
        void* mem = mmap(nullptr, c.stack_bytes + page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                         -1, 0);
        if (mem == MAP_FAILED) {
            fprintf(stderr, "flashts_emu: cannot map a fiber stack\n");
            abort();
        }
        mprotect(mem, page, PROT_NONE);  // guard page below the stack
        f.stack = static_cast<unsigned char*>(mem) + page;
    }
}

// Dynamic shared memory of `bytes`, 128-byte aligned, ending at (at most 127 bytes before) a guard page.
inline void prepare_smem(size_t bytes) {
    Ctx& c = ctx();
    const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
    const size_t rounded = (bytes + 127) / 128 * 128;
    const size_t need = (rounded + page - 1) / page * page + page;
    if (need > c.smem_region_bytes) {
        if (c.smem_region) munmap(c.smem_region, c.smem_region_bytes);
        void* mem = mmap(nullptr, need, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (mem == MAP_FAILED) {
            fprintf(stderr, "flashts_emu: cannot map shared memory\n");
            abort();
        }
        c.smem_region = static_cast<unsigned char*>(mem);
        c.smem_region_bytes = need;
    } else {
        mprotect(c.smem_region, c.smem_region_bytes, PROT_READ | PROT_WRITE);
    }
    unsigned char* guard = c.smem_region + c.smem_region_bytes - page;
    mprotect(guard, page, PROT_NONE);
    c.smem = guard - rounded;
    c.smem_bytes = bytes;
}

inline std::string describe_waits(int max_lines = 12) {
    Ctx& c = ctx();
    std::map<std::string, std::vector<int>> groups;
    for (int i = 0; i < c.n_threads; ++i) {
        const Fiber& f = c.fibers[i];
        std::string k;
        switch (f.state) {
            case State::Done: k = "exited"; break;
            case State::Runnable: k = "runnable"; break;
            case State::Barrier: k = strprintf("waiting at __syncthreads() %s:%d", f.file, f.line); break;
            case State::Warp:
                k = strprintf("waiting in %s (mask 0x%08x) %s:%d", op_name(f.op), f.mask, f.file, f.line);
                break;
        }
        groups[k].push_back(i);
    }
    std::string out;
    int lines = 0;
    for (auto& g : groups) {
        if (lines++ == max_lines) {
            out += "\n    ...";
            break;
        }
        const auto& ids = g.second;
        std::string who = strprintf("%zu thread(s) [linear ids %d", ids.size(), ids[0]);
        for (size_t j = 1; j < ids.size() && j < 6; ++j) who += strprintf(",%d", ids[j]);
        who += ids.size() > 6 ? ",...]" : "]";
        out += "\n    " + who + ": " + g.first;
    }
    return out;
}

// Completes the warp collectives whose every lane has arrived; returns whether any fiber became runnable.
inline bool resolve_warps() {
    Ctx& c = ctx();
    bool progress = false;
    const int n_warps = (c.n_threads + 31) / 32;
    for (int w = 0; w < n_warps; ++w) {
        Fiber* lanes[32] = {};
        for (int l = 0; l < 32 && w * 32 + l < c.n_threads; ++l) lanes[l] = &c.fibers[w * 32 + l];
        for (int l = 0; l < 32; ++l) {
            Fiber* f = lanes[l];
            if (!f || f->state != State::Warp) continue;
            const unsigned mask = f->mask;
            bool complete = true;
            for (int j = 0; j < 32 && complete; ++j) {
                if (!(mask >> j & 1u)) continue;
                Fiber* g = lanes[j];
                if (!g || g->state != State::Warp || g->mask != mask) complete = false;
            }
            if (!complete) continue;
            for (int j = 0; j < 32; ++j) {
                if (!(mask >> j & 1u)) continue;
                if (lanes[j]->op != f->op) {
                    record_failure(strprintf("warp %d: lanes of one collective (mask 0x%08x) run different operations: "
                                             "lane %d %s at %s:%d, lane %d %s at %s:%d",
                                             w, mask, l, op_name(f->op), f->file, f->line, j, op_name(lanes[j]->op),
                                             lanes[j]->file, lanes[j]->line));
                    return false;
                }
            }
            uint64_t acc_and = ~0ull, acc_or = 0, acc_xor = 0, ballot = 0;
            int64_t acc_min = INT64_MAX, acc_max = INT64_MIN;
            uint64_t acc_add = 0;
            for (int j = 0; j < 32; ++j) {
                if (!(mask >> j & 1u)) continue;
                const uint64_t v = lanes[j]->value;
                acc_and &= v;
                acc_or |= v;
                acc_xor ^= v;
                acc_add += v;
                if (v) ballot |= 1ull << j;
                const int64_t sv = static_cast<int32_t>(static_cast<uint32_t>(v));
                acc_min = std::min(acc_min, sv);
                acc_max = std::max(acc_max, sv);
            }
            for (int j = 0; j < 32; ++j) {
                if (!(mask >> j & 1u)) continue;
                Fiber* g = lanes[j];
                switch (f->op) {
                    case Op::SyncWarp: g->result = 0; break;
                    case Op::Shfl:
                        if (g->src < 0) {
                            g->result = g->value;
                        } else if (!(mask >> g->src & 1u)) {
                            record_failure(strprintf("warp %d lane %d (%s:%d): shuffle reads lane %d, which is not in "
                                                     "the mask 0x%08x",
                                                     w, j, g->file, g->line, g->src, mask));
                            return false;
                        } else {
                            g->result = lanes[g->src]->value;
                        }
                        break;
                    case Op::Ballot: g->result = ballot; break;
                    case Op::Any: g->result = ballot != 0; break;
                    case Op::All: g->result = ballot == mask; break;
                    case Op::ReduceAdd: g->result = acc_add & 0xffffffffull; break;
                    case Op::ReduceMin: g->result = static_cast<uint32_t>(acc_min); break;
                    case Op::ReduceMax: g->result = static_cast<uint32_t>(acc_max); break;
                    case Op::ReduceAnd: g->result = acc_and; break;
                    case Op::ReduceOr: g->result = acc_or; break;
                    case Op::ReduceXor: g->result = acc_xor; break;
                    case Op::MatchAny: {
                        uint64_t m = 0;
                        for (int i = 0; i < 32; ++i)
                            if ((mask >> i & 1u) && lanes[i]->value == g->value) m |= 1ull << i;
                        g->result = m;
                        break;
                    }
                }
                g->state = State::Runnable;
            }
            progress = true;
        }
    }
    return progress;
}

inline void run_block() {
    Ctx& c = ctx();
    const int n = c.n_threads;
    for (int i = 0; i < n; ++i) {
        Fiber& f = c.fibers[i];
        f.tid = make_uint3(i % c.block.x, (i / c.block.x) % c.block.y, i / (c.block.x * c.block.y));
        f.linear = i;
        f.warp = i / 32;
        f.lane = i % 32;
        f.state = State::Runnable;
        f.copies.clear();
        f.group_ends.clear();
        getcontext(&f.ctx);
        f.ctx.uc_stack.ss_sp = f.stack;
        f.ctx.uc_stack.ss_size = c.stack_bytes;
        f.ctx.uc_link = nullptr;
        makecontext(&f.ctx, fiber_entry, 0);
    }
    std::memset(c.smem, 0xFF, c.smem_bytes);
    for (auto& s : c.warp_scratch) std::fill(s.begin(), s.end(), 0xFF);
    while (!c.failed) {
        bool ran = false;
        for (int idx : c.order) {
            Fiber& f = c.fibers[idx];
            if (f.state != State::Runnable) continue;
            c.current = &f;
            cur_threadIdx = f.tid;
            swapcontext(&c.sched, &f.ctx);
            c.current = nullptr;
            ran = true;
            if (c.failed) return;
        }
        // every fiber now waits (barrier or warp collective) or is done
        bool progress = resolve_warps();
        if (c.failed) return;
        int at_barrier = 0, done = 0, in_warp = 0;
        for (int i = 0; i < n; ++i) {
            const State s = c.fibers[i].state;
            at_barrier += s == State::Barrier;
            done += s == State::Done;
            in_warp += s == State::Warp;
        }
        if (done == n) return;
        if (progress) continue;
        if (at_barrier == n) {
            const Fiber& f0 = c.fibers[0];
            int count = 0;
            for (int i = 0; i < n; ++i) {
                const Fiber& f = c.fibers[i];
                if (f.line != f0.line || std::strcmp(f.file, f0.file) != 0) {
                    record_failure(strprintf("divergent __syncthreads(): thread (%u,%u,%u) waits at %s:%d, thread "
                                             "(%u,%u,%u) at %s:%d (block (%u,%u,%u))",
                                             f0.tid.x, f0.tid.y, f0.tid.z, f0.file, f0.line, f.tid.x, f.tid.y, f.tid.z,
                                             f.file, f.line, cur_blockIdx.x, cur_blockIdx.y, cur_blockIdx.z));
                    return;
                }
                count += f.pred != 0;
            }
            for (int i = 0; i < n; ++i) {
                c.fibers[i].state = State::Runnable;
                c.fibers[i].result = static_cast<uint64_t>(count);
            }
            continue;
        }
        if (!ran || at_barrier + in_warp + done == n) {
            const char* why = done > 0 && at_barrier > 0 && in_warp == 0
                                  ? "__syncthreads() is waited for by threads while others of the block exited"
                                  : "deadlock: no thread can make progress";
            record_failure(strprintf("%s (block (%u,%u,%u)):%s", why, cur_blockIdx.x, cur_blockIdx.y, cur_blockIdx.z,
                                     describe_waits().c_str()));
            return;
        }
    }
}

inline void make_order(int n) {
    Ctx& c = ctx();
    c.order.resize(n);
    for (int i = 0; i < n; ++i) c.order[i] = i;
    if (c.schedule == 1) {
        std::reverse(c.order.begin(), c.order.end());
    } else if (c.schedule >= 2) {
        std::mt19937 rng(static_cast<unsigned>(c.schedule));
        std::shuffle(c.order.begin(), c.order.end(), rng);
    }
}

inline void set_error(cudaError_t e) {
    Ctx& c = ctx();
    if (c.last_error == cudaSuccess) c.last_error = e;
}

inline void config_error(const char* kernel, const char* file, int line, cudaError_t e, const std::string& msg) {
    Ctx& c = ctx();
    c.last_message = strprintf("flashts_emu: kernel %s (launched at %s:%d): %s", kernel, file, line, msg.c_str());
    fprintf(stderr, "%s\n", c.last_message.c_str());
    set_error(e);
}

// The launch: runs the whole grid now. `kernel_ptr` keys the per-kernel attributes (cudaFuncSetAttribute).
inline void launch_impl(const char* name, const char* file, int line, const void* kernel_ptr, dim3 grid, dim3 block,
                        size_t smem_bytes, std::function<void()> body) {
    Ctx& c = ctx();
    if (c.in_launch) {
        config_error(name, file, line, cudaErrorNotSupported, "a launch from inside a kernel (dynamic parallelism)");
        return;
    }
    const uint64_t threads = static_cast<uint64_t>(block.x) * block.y * block.z;
    if (threads == 0 || threads > 1024 || block.z > 64 || grid.x == 0 || grid.y == 0 || grid.z == 0 ||
        grid.y > 65535 || grid.z > 65535 || grid.x > 2147483647u) {
        config_error(name, file, line, cudaErrorInvalidConfiguration,
                     strprintf("invalid configuration grid (%u,%u,%u) block (%u,%u,%u)", grid.x, grid.y, grid.z,
                               block.x, block.y, block.z));
        return;
    }
    int limit = kDeviceSmemDefault;
    auto it = c.max_dynamic_smem.find(kernel_ptr);
    if (it != c.max_dynamic_smem.end()) limit = it->second;
    if (smem_bytes > static_cast<size_t>(limit)) {
        config_error(name, file, line, cudaErrorInvalidValue,
                     strprintf("%zu bytes of dynamic shared memory, above the kernel's limit of %d (raise it with "
                               "cudaFuncSetAttribute(..., cudaFuncAttributeMaxDynamicSharedMemorySize, ...))",
                               smem_bytes, limit));
        return;
    }
    const int n = static_cast<int>(threads);
    ensure_fibers(n);
    prepare_smem(smem_bytes);
    c.warp_scratch.assign((n + 31) / 32, std::vector<unsigned char>(4096, 0xFF));
    c.kernel = name;
    c.file = file;
    c.line = line;
    c.grid = grid;
    c.block = block;
    c.body = std::move(body);
    c.failed = false;
    c.error.clear();
    c.n_threads = n;
    if (const char* s = getenv("FLASHTS_EMU_SCHEDULE")) c.schedule = atoi(s);
    make_order(n);
    cur_gridDim = grid;
    cur_blockDim = block;
    // signal handlers (on an alternate stack, so that a fiber stack overflow is reported too)
    if (c.altstack.empty()) c.altstack.resize(64 * 1024);
    stack_t ss{};
    ss.ss_sp = c.altstack.data();
    ss.ss_size = c.altstack.size();
    stack_t old_ss{};
    sigaltstack(&ss, &old_ss);
    struct sigaction sa {};
    sa.sa_sigaction = segv_handler;
    sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGSEGV, &sa, &c.old_segv);
    sigaction(SIGBUS, &sa, &c.old_bus);
    c.in_launch = true;
    for (unsigned bz = 0; bz < grid.z && !c.failed; ++bz)
        for (unsigned by = 0; by < grid.y && !c.failed; ++by)
            for (unsigned bx = 0; bx < grid.x && !c.failed; ++bx) {
                cur_blockIdx = make_uint3(bx, by, bz);
                run_block();
            }
    c.in_launch = false;
    sigaction(SIGSEGV, &c.old_segv, nullptr);
    sigaction(SIGBUS, &c.old_bus, nullptr);
    sigaltstack(&old_ss, nullptr);
    c.body = nullptr;
    if (c.failed) {
        c.last_message = c.error;
        fprintf(stderr, "%s\n", c.error.c_str());
        set_error(cudaErrorLaunchFailure);
    }
}

template <typename... P, typename... A>
void launch(const char* name, const char* file, int line, void (*kernel)(P...), dim3 grid, dim3 block,
            size_t smem_bytes, cudaStream_t, A&&... args) {
    static_assert(sizeof...(P) == sizeof...(A), "FLASHTS_LAUNCH: wrong number of kernel arguments");
    // the kernel's parameters, converted once like a real launch; every thread gets its own copy
    std::tuple<std::decay_t<P>...> params(static_cast<std::decay_t<P>>(std::forward<A>(args))...);
    launch_impl(name, file, line, reinterpret_cast<const void*>(kernel), grid, block, smem_bytes, [&]() {
        std::tuple<std::decay_t<P>...> mine = params;
        std::apply(kernel, mine);
    });
}

inline unsigned char* dynamic_smem() { return ctx().smem; }

// 4 KB of scratch per warp (the host branches of the mma wrappers exchange fragments through it).
inline void* warp_scratch() { return ctx().warp_scratch[self().warp].data(); }

// ------------------------------------------------------------------------------------------ synchronisation

inline int syncthreads(const char* file, int line, int pred = 0) {
    Fiber& f = self();
    f.state = State::Barrier;
    f.file = file;
    f.line = line;
    f.pred = pred;
    yield();
    return static_cast<int>(f.result);
}

inline uint64_t collective(Op op, unsigned mask, uint64_t value, int src, const char* file, int line) {
    Fiber& f = self();
    if (!(mask >> f.lane & 1u))
        fail_in_fiber(strprintf("%s at %s:%d: lane %d calls a warp collective whose mask 0x%08x leaves it out (%s)",
                                op_name(op), file, line, f.lane, mask, where(f).c_str()));
    f.state = State::Warp;
    f.op = op;
    f.mask = mask;
    f.value = value;
    f.src = src;
    f.file = file;
    f.line = line;
    yield();
    return f.result;
}

template <typename T>
inline uint64_t to_bits(T v) {
    static_assert(sizeof(T) <= 8 && std::is_trivially_copyable<T>::value, "shuffle of a type larger than 8 bytes");
    uint64_t b = 0;
    std::memcpy(&b, &v, sizeof(T));
    return b;
}
template <typename T>
inline T from_bits(uint64_t b) {
    T v;
    std::memcpy(&v, &b, sizeof(T));
    return v;
}

inline void check_width(int width, const char* file, int line) {
    if (width < 1 || width > 32 || (width & (width - 1)))
        fail_in_fiber(strprintf("shuffle width %d at %s:%d is not a power of two in [1, 32]", width, file, line));
}

template <typename T>
T shfl(unsigned mask, T v, int src_lane, int width, const char* file, int line) {
    check_width(width, file, line);
    const int lane = self().lane;
    const int src = (lane & ~(width - 1)) + (src_lane & (width - 1));
    return from_bits<T>(collective(Op::Shfl, mask, to_bits(v), src, file, line));
}
template <typename T>
T shfl_xor(unsigned mask, T v, int lane_mask, int width, const char* file, int line) {
    check_width(width, file, line);
    const int lane = self().lane;
    int src = lane ^ lane_mask;
    if ((src & ~(width - 1)) != (lane & ~(width - 1)) || src > 31) src = -1;  // outside the segment: own value
    return from_bits<T>(collective(Op::Shfl, mask, to_bits(v), src, file, line));
}
template <typename T>
T shfl_up(unsigned mask, T v, unsigned delta, int width, const char* file, int line) {
    check_width(width, file, line);
    const int lane = self().lane;
    const int src = (lane & (width - 1)) >= static_cast<int>(delta) ? lane - static_cast<int>(delta) : -1;
    return from_bits<T>(collective(Op::Shfl, mask, to_bits(v), src, file, line));
}
template <typename T>
T shfl_down(unsigned mask, T v, unsigned delta, int width, const char* file, int line) {
    check_width(width, file, line);
    const int lane = self().lane;
    const int src = (lane & (width - 1)) + static_cast<int>(delta) < width ? lane + static_cast<int>(delta) : -1;
    return from_bits<T>(collective(Op::Shfl, mask, to_bits(v), src, file, line));
}

// ---------------------------------------------------------------------------------------------- cp.async

inline void cp_async_16(void* smem, const void* gmem, bool pred, const char* file, int line) {
    Fiber& f = self();
    const uintptr_t s = reinterpret_cast<uintptr_t>(smem), g = reinterpret_cast<uintptr_t>(gmem);
    Ctx& c = ctx();
    if (s % 16 != 0 || (pred && g % 16 != 0))
        fail_in_fiber(strprintf("cp_async_16 at %s:%d: misaligned address (smem %p, gmem %p; both must be 16-byte "
                                "aligned) in %s",
                                file, line, smem, gmem, where(f).c_str()));
    (void)c;
    Copy16 cp;
    cp.dst = static_cast<unsigned char*>(smem);
    if (pred) std::memcpy(cp.bytes, gmem, 16);
    else std::memset(cp.bytes, 0, 16);
    std::memset(smem, 0xFF, 16);  // undefined until the copy completes
    f.copies.push_back(cp);
}

inline void cp_async_commit() {
    Fiber& f = self();
    f.group_ends.push_back(f.copies.size());
}

// cp.async.wait_group n: every committed group but the n most recent is complete (n < 0: wait_all, i.e. every
// copy issued so far, committed or not).
inline void cp_async_wait(int n) {
    Fiber& f = self();
    size_t upto;
    if (n < 0) upto = f.copies.size();
    else if (static_cast<size_t>(n) >= f.group_ends.size()) upto = 0;
    else upto = f.group_ends[f.group_ends.size() - 1 - static_cast<size_t>(n)];
    for (size_t i = 0; i < upto; ++i) std::memcpy(f.copies[i].dst, f.copies[i].bytes, 16);
    f.copies.erase(f.copies.begin(), f.copies.begin() + static_cast<std::ptrdiff_t>(upto));
    std::vector<size_t> ends;
    for (size_t e : f.group_ends)
        if (e > upto) ends.push_back(e - upto);
    f.group_ends.swap(ends);
}

}  // namespace flashts_emu

// ----------------------------------------------------------------------------------------- built-in variables
#define threadIdx (static_cast<const uint3&>(::flashts_emu::cur_threadIdx))
#define blockIdx (static_cast<const uint3&>(::flashts_emu::cur_blockIdx))
#define blockDim (static_cast<const dim3&>(::flashts_emu::cur_blockDim))
#define gridDim (static_cast<const dim3&>(::flashts_emu::cur_gridDim))

// --------------------------------------------------------------------------------- barriers and warp functions
// Real functions; the call site (for the messages and the divergent-barrier check) comes from GCC's
// __builtin_FILE() / __builtin_LINE() default arguments.
#define FLASHTS_EMU_SITE const char *file = __builtin_FILE(), int line = __builtin_LINE()
inline void __syncthreads(FLASHTS_EMU_SITE) { (void)flashts_emu::syncthreads(file, line); }
inline int __syncthreads_count(int p, FLASHTS_EMU_SITE) { return flashts_emu::syncthreads(file, line, p ? 1 : 0); }
inline int __syncthreads_and(int p, FLASHTS_EMU_SITE) {
    return flashts_emu::syncthreads(file, line, p ? 1 : 0) == flashts_emu::ctx().n_threads;
}
inline int __syncthreads_or(int p, FLASHTS_EMU_SITE) { return flashts_emu::syncthreads(file, line, p ? 1 : 0) != 0; }
inline void __syncwarp(unsigned mask = 0xffffffffu, FLASHTS_EMU_SITE) {
    (void)flashts_emu::collective(flashts_emu::Op::SyncWarp, mask, 0, 0, file, line);
}
template <typename T>
inline T __shfl_sync(unsigned mask, T v, int src, int width = 32, FLASHTS_EMU_SITE) {
    return flashts_emu::shfl(mask, v, src, width, file, line);
}
template <typename T>
inline T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32, FLASHTS_EMU_SITE) {
    return flashts_emu::shfl_xor(mask, v, lane_mask, width, file, line);
}
template <typename T>
inline T __shfl_up_sync(unsigned mask, T v, unsigned delta, int width = 32, FLASHTS_EMU_SITE) {
    return flashts_emu::shfl_up(mask, v, delta, width, file, line);
}
template <typename T>
inline T __shfl_down_sync(unsigned mask, T v, unsigned delta, int width = 32, FLASHTS_EMU_SITE) {
    return flashts_emu::shfl_down(mask, v, delta, width, file, line);
}
inline unsigned __ballot_sync(unsigned mask, int p, FLASHTS_EMU_SITE) {
    return static_cast<unsigned>(flashts_emu::collective(flashts_emu::Op::Ballot, mask, p ? 1 : 0, 0, file, line));
}
inline int __any_sync(unsigned mask, int p, FLASHTS_EMU_SITE) {
    return static_cast<int>(flashts_emu::collective(flashts_emu::Op::Any, mask, p ? 1 : 0, 0, file, line));
}
inline int __all_sync(unsigned mask, int p, FLASHTS_EMU_SITE) {
    return static_cast<int>(flashts_emu::collective(flashts_emu::Op::All, mask, p ? 1 : 0, 0, file, line));
}
inline unsigned __reduce_add_sync(unsigned mask, unsigned v, FLASHTS_EMU_SITE) {
    return static_cast<unsigned>(flashts_emu::collective(flashts_emu::Op::ReduceAdd, mask, v, 0, file, line));
}
inline unsigned __reduce_and_sync(unsigned mask, unsigned v, FLASHTS_EMU_SITE) {
    return static_cast<unsigned>(flashts_emu::collective(flashts_emu::Op::ReduceAnd, mask, v, 0, file, line));
}
inline unsigned __reduce_or_sync(unsigned mask, unsigned v, FLASHTS_EMU_SITE) {
    return static_cast<unsigned>(flashts_emu::collective(flashts_emu::Op::ReduceOr, mask, v, 0, file, line));
}
inline unsigned __reduce_xor_sync(unsigned mask, unsigned v, FLASHTS_EMU_SITE) {
    return static_cast<unsigned>(flashts_emu::collective(flashts_emu::Op::ReduceXor, mask, v, 0, file, line));
}
// min/max: the collective compares as int32; unsigned values get their sign bit flipped around it
inline int __reduce_min_sync(unsigned mask, int v, FLASHTS_EMU_SITE) {
    return static_cast<int>(static_cast<uint32_t>(
        flashts_emu::collective(flashts_emu::Op::ReduceMin, mask, static_cast<uint32_t>(v), 0, file, line)));
}
inline int __reduce_max_sync(unsigned mask, int v, FLASHTS_EMU_SITE) {
    return static_cast<int>(static_cast<uint32_t>(
        flashts_emu::collective(flashts_emu::Op::ReduceMax, mask, static_cast<uint32_t>(v), 0, file, line)));
}
inline unsigned __reduce_min_sync(unsigned mask, unsigned v, FLASHTS_EMU_SITE) {
    return static_cast<uint32_t>(flashts_emu::collective(flashts_emu::Op::ReduceMin, mask, v ^ 0x80000000u, 0, file,
                                                         line)) ^ 0x80000000u;
}
inline unsigned __reduce_max_sync(unsigned mask, unsigned v, FLASHTS_EMU_SITE) {
    return static_cast<uint32_t>(flashts_emu::collective(flashts_emu::Op::ReduceMax, mask, v ^ 0x80000000u, 0, file,
                                                         line)) ^ 0x80000000u;
}
template <typename T>
inline unsigned __match_any_sync(unsigned mask, T v, FLASHTS_EMU_SITE) {
    return static_cast<unsigned>(
        flashts_emu::collective(flashts_emu::Op::MatchAny, mask, flashts_emu::to_bits(v), 0, file, line));
}
// tensor-core / async-copy wrappers of csrc/common.cuh call these (the call site of the wrapper is reported)
inline void flashts_emu_cp_async_16(void* smem, const void* gmem, bool pred, FLASHTS_EMU_SITE) {
    flashts_emu::cp_async_16(smem, gmem, pred, file, line);
}

inline unsigned __activemask() {
    using namespace flashts_emu;
    Ctx& c = ctx();
    const Fiber& f = self();
    unsigned m = 0;
    for (int l = 0; l < 32; ++l) {
        const int i = f.warp * 32 + l;
        if (i < c.n_threads && c.fibers[i].state != State::Done) m |= 1u << l;
    }
    return m;
}
inline int __lane_id_emu() { return flashts_emu::self().lane; }

inline void __threadfence() {}
inline void __threadfence_block() {}
inline void __threadfence_system() {}
inline void __nanosleep(unsigned) {}
inline long long clock64() {
    static long long t = 0;
    return ++t;
}
inline int clock() { return static_cast<int>(clock64()); }

// --------------------------------------------------------------------------------------------- math intrinsics
inline float __int_as_float(int x) { float f; std::memcpy(&f, &x, 4); return f; }
inline int __float_as_int(float x) { int i; std::memcpy(&i, &x, 4); return i; }
inline float __uint_as_float(unsigned x) { float f; std::memcpy(&f, &x, 4); return f; }
inline unsigned __float_as_uint(float x) { unsigned i; std::memcpy(&i, &x, 4); return i; }
inline double __longlong_as_double(long long x) { double d; std::memcpy(&d, &x, 8); return d; }
inline long long __double_as_longlong(double x) { long long i; std::memcpy(&i, &x, 8); return i; }
inline float __expf(float x) { return std::exp(x); }
inline float __exp10f(float x) { return std::pow(10.f, x); }
inline float __logf(float x) { return std::log(x); }
inline float __log2f(float x) { return std::log2(x); }
inline float __log10f(float x) { return std::log10(x); }
inline float __powf(float x, float y) { return std::pow(x, y); }
inline float __sinf(float x) { return std::sin(x); }
inline float __cosf(float x) { return std::cos(x); }
inline float __tanf(float x) { return std::tan(x); }
inline void __sincosf(float x, float* s, float* c) { *s = std::sin(x); *c = std::cos(x); }
inline void sincosf_emu(float x, float* s, float* c) { *s = std::sin(x); *c = std::cos(x); }
inline float __fdividef(float a, float b) { return a / b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline float __frcp_rn(float x) { return 1.f / x; }
inline float __fsqrt_rn(float x) { return std::sqrt(x); }
inline float __frsqrt_rn(float x) { return 1.f / std::sqrt(x); }
inline float rsqrtf(float x) { return 1.f / std::sqrt(x); }
inline double rsqrt(double x) { return 1.0 / std::sqrt(x); }
inline float __saturatef(float x) { return x != x ? 0.f : std::min(1.f, std::max(0.f, x)); }
inline float __fmaf_rn(float a, float b, float c) { return std::fma(a, b, c); }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline int __float2int_rn(float x) { return static_cast<int>(std::nearbyint(x)); }
inline int __float2int_rz(float x) { return static_cast<int>(x); }
inline int __float2int_rd(float x) { return static_cast<int>(std::floor(x)); }
inline int __float2int_ru(float x) { return static_cast<int>(std::ceil(x)); }
inline unsigned __float2uint_rn(float x) { return static_cast<unsigned>(std::nearbyint(x)); }
inline float __int2float_rn(int x) { return static_cast<float>(x); }
inline float __uint2float_rn(unsigned x) { return static_cast<float>(x); }
inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline int __popcll(unsigned long long x) { return __builtin_popcountll(x); }
inline int __clz(int x) { return x == 0 ? 32 : __builtin_clz(static_cast<unsigned>(x)); }
inline int __clzll(long long x) { return x == 0 ? 64 : __builtin_clzll(static_cast<unsigned long long>(x)); }
inline int __ffs(int x) { return __builtin_ffs(x); }
inline int __ffsll(long long x) { return __builtin_ffsll(x); }
inline unsigned __brev(unsigned x) {
    unsigned r = 0;
    for (int i = 0; i < 32; ++i) r |= ((x >> i) & 1u) << (31 - i);
    return r;
}
inline int __mul24(int a, int b) { return a * b; }
inline unsigned __umul24(unsigned a, unsigned b) { return a * b; }
inline int __mulhi(int a, int b) { return static_cast<int>((static_cast<int64_t>(a) * b) >> 32); }
inline unsigned __umulhi(unsigned a, unsigned b) { return static_cast<unsigned>((static_cast<uint64_t>(a) * b) >> 32); }
template <typename T>
inline T __ldg(const T* p) { return *p; }
template <typename T>
inline T __ldcg(const T* p) { return *p; }
template <typename T>
inline T __ldca(const T* p) { return *p; }
template <typename T>
inline T __ldcs(const T* p) { return *p; }
template <typename T>
inline T __ldlu(const T* p) { return *p; }
template <typename T>
inline void __stcg(T* p, T v) { *p = v; }
template <typename T>
inline void __stcs(T* p, T v) { *p = v; }
template <typename T>
inline void __stwt(T* p, T v) { *p = v; }
template <typename T>
inline void __stwb(T* p, T v) { *p = v; }
using std::fmaxf;
using std::fminf;
// CUDA's device min/max accept mixed integer types (the usual arithmetic conversions)
template <typename A, typename B, typename = std::enable_if_t<std::is_arithmetic<A>::value && std::is_arithmetic<B>::value>>
inline std::common_type_t<A, B> min(A a, B b) {
    return b < a ? static_cast<std::common_type_t<A, B>>(b) : static_cast<std::common_type_t<A, B>>(a);
}
template <typename A, typename B, typename = std::enable_if_t<std::is_arithmetic<A>::value && std::is_arithmetic<B>::value>>
inline std::common_type_t<A, B> max(A a, B b) {
    return a < b ? static_cast<std::common_type_t<A, B>>(b) : static_cast<std::common_type_t<A, B>>(a);
}
inline uint64_t __cvta_generic_to_shared(const void* p) { return reinterpret_cast<uint64_t>(p); }

// ------------------------------------------------------------------------------------------------- atomics
// One OS thread runs every fiber and fibers switch only at barriers/collectives: a plain read-modify-write is
// atomic here.
template <typename T>
inline T atomicAdd(T* p, T v) { T o = *p; *p = o + v; return o; }
template <typename T>
inline T atomicSub(T* p, T v) { T o = *p; *p = o - v; return o; }
template <typename T>
inline T atomicExch(T* p, T v) { T o = *p; *p = v; return o; }
template <typename T>
inline T atomicMax(T* p, T v) { T o = *p; *p = o < v ? v : o; return o; }
template <typename T>
inline T atomicMin(T* p, T v) { T o = *p; *p = v < o ? v : o; return o; }
template <typename T>
inline T atomicAnd(T* p, T v) { T o = *p; *p = o & v; return o; }
template <typename T>
inline T atomicOr(T* p, T v) { T o = *p; *p = o | v; return o; }
template <typename T>
inline T atomicXor(T* p, T v) { T o = *p; *p = o ^ v; return o; }
template <typename T>
inline T atomicCAS(T* p, T cmp, T v) { T o = *p; if (o == cmp) *p = v; return o; }
inline unsigned atomicInc(unsigned* p, unsigned m) { unsigned o = *p; *p = o >= m ? 0 : o + 1; return o; }
inline unsigned atomicDec(unsigned* p, unsigned m) { unsigned o = *p; *p = (o == 0 || o > m) ? m : o - 1; return o; }
#define atomicAdd_block atomicAdd
#define atomicMax_block atomicMax

// ------------------------------------------------------------------------------------ cudart stubs (an H200)
extern "C" {
__attribute__((weak)) cudaError_t cudaGetLastError(void) {
    auto& c = flashts_emu::ctx();
    cudaError_t e = c.last_error;
    c.last_error = cudaSuccess;
    return e;
}
__attribute__((weak)) cudaError_t cudaPeekAtLastError(void) { return flashts_emu::ctx().last_error; }
__attribute__((weak)) const char* cudaGetErrorName(cudaError_t e) {
    switch (e) {
        case cudaSuccess: return "cudaSuccess";
        case cudaErrorInvalidValue: return "cudaErrorInvalidValue";
        case cudaErrorInvalidConfiguration: return "cudaErrorInvalidConfiguration";
        case cudaErrorLaunchFailure: return "cudaErrorLaunchFailure";
        case cudaErrorNotSupported: return "cudaErrorNotSupported";
        default: return "cudaError (emulated)";
    }
}
__attribute__((weak)) const char* cudaGetErrorString(cudaError_t e) { return cudaGetErrorName(e); }
__attribute__((weak)) cudaError_t cudaGetDevice(int* d) {
    *d = 0;
    return cudaSuccess;
}
__attribute__((weak)) cudaError_t cudaDeviceGetAttribute(int* value, enum cudaDeviceAttr attr, int) {
    switch (attr) {
        case cudaDevAttrMaxSharedMemoryPerBlockOptin: *value = flashts_emu::kDeviceSmemOptin; break;
        case cudaDevAttrMaxSharedMemoryPerBlock: *value = flashts_emu::kDeviceSmemDefault; break;
        case cudaDevAttrMaxSharedMemoryPerMultiprocessor: *value = 228 * 1024; break;
        case cudaDevAttrMultiProcessorCount: *value = flashts_emu::kDeviceSms; break;
        case cudaDevAttrMaxThreadsPerBlock: *value = 1024; break;
        case cudaDevAttrMaxThreadsPerMultiProcessor: *value = 2048; break;
        case cudaDevAttrMaxBlocksPerMultiprocessor: *value = 32; break;
        case cudaDevAttrMaxRegistersPerBlock: *value = 65536; break;
        case cudaDevAttrMaxRegistersPerMultiprocessor: *value = 65536; break;
        case cudaDevAttrWarpSize: *value = 32; break;
        case cudaDevAttrComputeCapabilityMajor: *value = 9; break;
        case cudaDevAttrComputeCapabilityMinor: *value = 0; break;
        case cudaDevAttrL2CacheSize: *value = 50 * 1024 * 1024; break;
        case cudaDevAttrMaxGridDimX: *value = 2147483647; break;
        case cudaDevAttrMaxGridDimY: *value = 65535; break;
        case cudaDevAttrMaxGridDimZ: *value = 65535; break;
        default:
            fprintf(stderr, "flashts_emu: cudaDeviceGetAttribute(%d) is not emulated (add it to cuda_host.h)\n",
                    static_cast<int>(attr));
            return cudaErrorNotSupported;
    }
    return cudaSuccess;
}
__attribute__((weak)) cudaError_t cudaGetDeviceProperties(struct cudaDeviceProp* p, int) {
    std::memset(p, 0, sizeof(*p));
    std::snprintf(p->name, sizeof p->name, "flashts_emu H200 (host emulation)");
    p->multiProcessorCount = flashts_emu::kDeviceSms;
    p->sharedMemPerBlock = flashts_emu::kDeviceSmemDefault;
    p->sharedMemPerBlockOptin = flashts_emu::kDeviceSmemOptin;
    p->sharedMemPerMultiprocessor = 228 * 1024;
    p->maxThreadsPerBlock = 1024;
    p->maxThreadsPerMultiProcessor = 2048;
    p->maxBlocksPerMultiProcessor = 32;
    p->regsPerBlock = 65536;
    p->regsPerMultiprocessor = 65536;
    p->warpSize = 32;
    p->major = 9;
    p->minor = 0;
    p->l2CacheSize = 50 * 1024 * 1024;
    return cudaSuccess;
}
__attribute__((weak)) cudaError_t cudaFuncSetAttribute(const void* func, enum cudaFuncAttribute attr, int value) {
    if (attr == cudaFuncAttributeMaxDynamicSharedMemorySize) {
        if (value < 0 || value > flashts_emu::kDeviceSmemOptin) return cudaErrorInvalidValue;
        flashts_emu::ctx().max_dynamic_smem[func] = value;
    }
    return cudaSuccess;
}
__attribute__((weak)) cudaError_t cudaOccupancyMaxActiveBlocksPerMultiprocessor(int* n, const void*, int block_size,
                                                                                size_t smem) {
    // threads and shared memory only (registers are unknown on the host)
    int by_threads = block_size > 0 ? 2048 / block_size : 0;
    int by_smem = static_cast<int>((228 * 1024) / (smem + 1024));
    *n = std::max(0, std::min(std::min(by_threads, by_smem), 32));
    return cudaSuccess;
}
__attribute__((weak)) cudaError_t cudaMemsetAsync(void* p, int value, size_t count, cudaStream_t) {
    std::memset(p, value, count);
    return cudaSuccess;
}
__attribute__((weak)) cudaError_t cudaMemset(void* p, int value, size_t count) {
    std::memset(p, value, count);
    return cudaSuccess;
}
__attribute__((weak)) cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t count, enum cudaMemcpyKind,
                                                  cudaStream_t) {
    std::memmove(dst, src, count);
    return cudaSuccess;
}
__attribute__((weak)) cudaError_t cudaMemcpy(void* dst, const void* src, size_t count, enum cudaMemcpyKind) {
    std::memmove(dst, src, count);
    return cudaSuccess;
}
__attribute__((weak)) cudaError_t cudaStreamSynchronize(cudaStream_t) { return cudaSuccess; }
__attribute__((weak)) cudaError_t cudaDeviceSynchronize(void) { return cudaSuccess; }
}  // extern "C"

template <typename T>
inline cudaError_t cudaMemcpyToSymbol(const T& symbol, const void* src, size_t count, size_t offset = 0,
                                      enum cudaMemcpyKind = cudaMemcpyHostToDevice) {
    std::memcpy(reinterpret_cast<unsigned char*>(const_cast<T*>(&symbol)) + offset, src, count);
    return cudaSuccess;
}
template <typename T>
inline cudaError_t cudaMemcpyToSymbolAsync(const T& symbol, const void* src, size_t count, size_t offset = 0,
                                           enum cudaMemcpyKind kind = cudaMemcpyHostToDevice, cudaStream_t = 0) {
    return cudaMemcpyToSymbol(symbol, src, count, offset, kind);
}
template <typename T>
inline cudaError_t cudaFuncSetAttribute(T* func, enum cudaFuncAttribute attr, int value) {
    return ::cudaFuncSetAttribute(reinterpret_cast<const void*>(func), attr, value);
}
template <typename T>
inline cudaError_t cudaOccupancyMaxActiveBlocksPerMultiprocessor(int* n, T* func, int block_size, size_t smem) {
    return ::cudaOccupancyMaxActiveBlocksPerMultiprocessor(n, reinterpret_cast<const void*>(func), block_size, smem);
}

// For the tests' extern "C" wrappers: schedule of the fibers (0 forward, 1 reverse, >= 2 seeded shuffle) and the
// message of the last failed launch ("" if none).
FLASHTS_EMU_EXPORT void flashts_emu_set_schedule(int s) { flashts_emu::ctx().schedule = s; }
FLASHTS_EMU_EXPORT const char* flashts_emu_last_error() { return flashts_emu::ctx().last_message.c_str(); }
FLASHTS_EMU_EXPORT void flashts_emu_clear_error() {
    flashts_emu::ctx().last_message.clear();
    flashts_emu::ctx().last_error = cudaSuccess;
}

#endif  // FLASHTS_CUDA_HOST_H
