package events

// The kernel programs, compiled from events.bpf.c for both byte orders; the
// objects and their Go bindings are committed, so a build needs no clang.
// Regenerating needs Debian 12's clang-14, llvm-14 and libbpf-dev.
//go:generate go tool bpf2go -cc clang-14 -strip llvm-strip-14 -cflags "-O2 -g -Wall -Werror -mcpu=v3 -I../kernel" -target bpfel,bpfeb -type connection_key -type client_key -type client_state -type group_state -type group_totals -type socket_state program events.bpf.c
