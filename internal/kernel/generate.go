package kernel

// held.h, the held word's layout for the kernel programs, is made from
// held.go; the programs that include it are compiled again after it
// (go generate ./internal/...).
//go:generate go run ./heldgen
