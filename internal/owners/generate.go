package owners

// The iterator's kernel program, compiled from iterator.bpf.c for both byte
// orders; the objects and their Go bindings are committed, so a build needs
// no clang. Regenerating needs Debian 12's clang-14, llvm-14 and libbpf-dev.
//go:generate go tool bpf2go -cc clang-14 -strip llvm-strip-14 -cflags "-O2 -g -Wall -Werror -I../kernel" -target bpfel,bpfeb program iterator.bpf.c
