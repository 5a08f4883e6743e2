//! The hivetrack tracking engine (work in progress: see the tracking-engine issue).
#![no_std]
