/*
 * Test-only shim for Wine 8, which has no bcryptprimitives.dll. Rust's std (1.78 and later)
 * imports ProcessPrng from it on Windows, so hivetrack.exe cannot start under Wine 8 without it.
 * `cargo xtask wine-e2e` builds this with mingw and copies it into its private Wine prefix only;
 * it is never part of the product package.
 */
#include <windows.h>
#include <bcrypt.h>

__declspec(dllexport) BOOL WINAPI ProcessPrng(PBYTE data, SIZE_T len)
{
    while (len > 0) {
        ULONG chunk = len > 0x10000000 ? 0x10000000 : (ULONG)len;
        if (!BCRYPT_SUCCESS(BCryptGenRandom(NULL, data, chunk, BCRYPT_USE_SYSTEM_PREFERRED_RNG)))
            return FALSE;
        data += chunk;
        len -= chunk;
    }
    return TRUE;
}
