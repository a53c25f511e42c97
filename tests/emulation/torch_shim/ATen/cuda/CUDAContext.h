// Emulated build of flashts._C: see ../../flashts_emu_torch.h.
#pragma once
#include "flashts_emu_torch.h"
