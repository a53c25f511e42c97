#include "emu_core.h"
extern "C" void emu_switch(void** save, void* to);
asm(R"(
.text
.globl emu_switch
.type emu_switch,@function
emu_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
)");
namespace emu {
thread_local uint3 tid, bid;
thread_local dim3 bdim, gdim;
namespace {
struct Fiber { void* sp; std::vector<char> stack; bool done; uint3 t; };
std::vector<Fiber> fibers;
void* sched_sp;
int cur = -1;
std::vector<char> smem;
std::function<void()>* body_p;
unsigned bcount, bgen; unsigned wcount[32], wgen[32]; uint32_t slots[32][32];
unsigned nthreads;
void yield() { emu_switch(&fibers[cur].sp, sched_sp); tid = fibers[cur].t; }
void entry() { (*body_p)(); fibers[cur].done = true; emu_switch(&fibers[cur].sp, sched_sp); }
}
void sync_block() { unsigned g = bgen; if (++bcount == nthreads) { bcount = 0; ++bgen; } else while (bgen == g) yield(); }
void sync_warp() { int w = tid.x >> 5; unsigned g = wgen[w]; if (++wcount[w] == 32) { wcount[w] = 0; ++wgen[w]; } else while (wgen[w] == g) yield(); }
uint32_t shfl_u32(uint32_t v, int src) { int w = tid.x >> 5; slots[w][tid.x & 31] = v; sync_warp(); uint32_t r = slots[w][src]; sync_warp(); return r; }
void* dyn_smem() { return smem.data(); }
void launch(dim3 grid, dim3 block, size_t sm, std::function<void()> body) {
    nthreads = block.x; bdim = block; gdim = grid; body_p = &body;
    if (fibers.size() < nthreads) fibers.resize(nthreads);
    for (auto& f : fibers) if (f.stack.empty()) f.stack.resize(512 * 1024);
    for (unsigned b = 0; b < grid.x; ++b) {
        smem.assign(sm + 16, (char)0x5a);  // garbage pattern
        bcount = bgen = 0; memset(wcount, 0, sizeof wcount); memset(wgen, 0, sizeof wgen);
        for (unsigned i = 0; i < nthreads; ++i) {
            Fiber& f = fibers[i]; f.done = false; f.t = uint3{i, 0, 0};
            uintptr_t top = (reinterpret_cast<uintptr_t>(f.stack.data()) + f.stack.size()) & ~uintptr_t(15);
            void** sp = reinterpret_cast<void**>(top);
            *--sp = nullptr; *--sp = reinterpret_cast<void*>(&entry);
            for (int r = 0; r < 6; ++r) *--sp = nullptr;
            f.sp = sp; }
        bid = uint3{b, 0, 0};
        unsigned live = nthreads;
        while (live) { live = 0;
            for (unsigned i = 0; i < nthreads; ++i) { if (fibers[i].done) continue; cur = i; tid = fibers[i].t;
                emu_switch(&sched_sp, fibers[i].sp); if (!fibers[i].done) ++live; } }
    }
}
}
