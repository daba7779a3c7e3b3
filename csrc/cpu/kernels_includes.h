// Every header the CPU kernels use, included BEFORE kernels_avx2.cpp switches the compiler's
// target: functions defined in headers must keep the baseline ISA (the linker keeps one copy of
// each inline function, which must run on every CPU); only our kernels get AVX2.
#pragma once

#include "../gc_ops.h"
#include "isa.h"

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <limits>
#include <string>
#include <vector>
