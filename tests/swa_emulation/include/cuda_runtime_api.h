#include "emu_core.h"
