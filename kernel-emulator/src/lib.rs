//! The hivetrack kernel emulator (work in progress: see the kernel-emulator issue).
