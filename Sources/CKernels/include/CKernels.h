#include "ckernels.h"
#include "ckpool.h"
