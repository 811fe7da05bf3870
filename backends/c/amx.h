/* llmc SIMD C runtime, AMX tiles (included before quant.h and matrix.h when a weight was packed for a
 * matrix unit): the permission the kernel must grant a process before its first tile instruction, and
 * the tile configuration's layout. LLMC_AMX is defined where the build has AMX and -DLLMC_NO_AMX was
 * not given; the kernels that use tiles fall back to vector code where the kernel refuses them. */
#if (defined(__AMX_BF16__) || defined(__AMX_INT8__)) && !defined(LLMC_NO_AMX)
#define LLMC_AMX 1
#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>
#define LLMC_ARCH_REQ_XCOMP_PERM 0x1023
#define LLMC_XFEATURE_XTILEDATA 18

/* 1: this process may use AMX tiles, -1: the kernel refused (or predates AMX); asked once. */
static int llmc_amx_permitted(void) {
    static int state;
    int known = __atomic_load_n(&state, __ATOMIC_ACQUIRE);
    if (!known) {
        known = syscall(SYS_arch_prctl, LLMC_ARCH_REQ_XCOMP_PERM, LLMC_XFEATURE_XTILEDATA) == 0 ? 1 : -1;
        __atomic_store_n(&state, known, __ATOMIC_RELEASE);
    }
    return known > 0;
}

/* Palette 1: bytes per row and rows of each tile. A kernel loads its configuration on every call and
 * releases the tiles after it: other libraries on the same thread (oneDNN in torch) configure and
 * release the tiles too, and a tile instruction after a release is an illegal one. Configurations are
 * constant data: one built on the stack had its stores dropped by GCC 12, which does not see
 * ldtilecfg read them. */
typedef struct {
    uint8_t palette, start_row, reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
} __attribute__((aligned(64))) llmc_amx_config;
#endif
