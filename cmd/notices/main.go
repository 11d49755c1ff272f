// Command notices writes the third-party notices of a built exporter: each
// Go module linked into it (as its build information says, the same list as
// `go version -m`), its version, its licence and the licence's text from the
// module. A linked module whose licence is missing or not one it knows fails
// it, so that a new dependency cannot slip into a release unlisted.
//
//	go run ./cmd/notices BINARY > NOTICES
//	go run ./cmd/notices -debian BINARY > copyright
package main

import (
	"debug/buildinfo"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"unicode"
)

// licence is a module's licence, as read from its file.
type licence struct {
	id, text string
}

// module is one linked module.
type module struct {
	path, version string
	licence
	copyright []string
}

func main() {
	debian := flag.Bool("debian", false, "write a Debian machine-readable copyright file instead")
	flag.Parse()
	if flag.NArg() != 1 {
		fmt.Fprintln(os.Stderr, "usage: notices [-debian] BINARY")
		os.Exit(2)
	}
	modules, err := linked(flag.Arg(0))
	if err != nil {
		fmt.Fprintln(os.Stderr, "notices:", err)
		os.Exit(1)
	}
	if *debian {
		err = writeDebian(os.Stdout, modules)
	} else {
		err = writeNotices(os.Stdout, modules)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "notices:", err)
		os.Exit(1)
	}
}

// linked reads the modules binary links, and each one's licence.
func linked(binary string) ([]module, error) {
	info, err := buildinfo.ReadFile(binary)
	if err != nil {
		return nil, err
	}
	out, err := exec.Command("go", "env", "GOMODCACHE").Output()
	if err != nil {
		return nil, fmt.Errorf("go env GOMODCACHE: %w", err)
	}
	cache := strings.TrimSpace(string(out))
	out, err = exec.Command("go", "env", "GOROOT").Output()
	if err != nil {
		return nil, fmt.Errorf("go env GOROOT: %w", err)
	}
	// Go's own library is linked in too.
	std := module{path: "go", version: info.GoVersion} // the standard library and runtime
	if std.licence, std.copyright, err = read(strings.TrimSpace(string(out))); err != nil {
		return nil, fmt.Errorf("go: %w", err)
	}
	modules := []module{std}
	for _, dep := range info.Deps {
		if dep.Replace != nil {
			dep = dep.Replace
		}
		m := module{path: dep.Path, version: dep.Version}
		dir := filepath.Join(cache, escape(dep.Path)+"@"+dep.Version)
		if m.licence, m.copyright, err = read(dir); err != nil {
			return nil, fmt.Errorf("%s %s: %w", dep.Path, dep.Version, err)
		}
		modules = append(modules, m)
	}
	return modules, nil
}

// escape is a module path as the module cache spells it: an upper-case
// letter is "!" and the letter in lower case.
func escape(path string) string {
	var b strings.Builder
	for _, r := range path {
		if unicode.IsUpper(r) {
			b.WriteByte('!')
			r = unicode.ToLower(r)
		}
		b.WriteRune(r)
	}
	return b.String()
}

var licenceFile = regexp.MustCompile(`(?i)^(licen[cs]e|copying)(\.(txt|md))?$`)

// read finds the licence in dir and tells which one it is.
func read(dir string) (licence, []string, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return licence{}, nil, fmt.Errorf("not in the module cache (go mod download): %w", err)
	}
	for _, e := range entries {
		if !licenceFile.MatchString(e.Name()) {
			continue
		}
		text, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			return licence{}, nil, err
		}
		text = elect(text)
		id := classify(string(text))
		if id == "" {
			return licence{}, nil, fmt.Errorf("%s is no licence this tool knows: read it, and teach classify", e.Name())
		}
		var copyright []string
		for _, line := range strings.Split(string(text), "\n") {
			if line = strings.TrimSpace(line); strings.HasPrefix(strings.ToLower(line), "copyright (c)") || strings.HasPrefix(strings.ToLower(line), "copyright 2") || strings.HasPrefix(line, "Copyright ©") {
				copyright = append(copyright, line)
			}
		}
		return licence{id: id, text: string(text)}, copyright, nil
	}
	return licence{}, nil, fmt.Errorf("no licence file in %s", dir)
}

// classify names a licence by its text, "" when it is none of these.
// elect takes, of a licence text that offers a choice with the GPL (libcap's
// "BSD-3-Clause OR GPL-2.0-only"), the other licence's part: the one the
// exporter is distributed under, a permissive one like the rest.
func elect(text []byte) []byte {
	if !regexp.MustCompile(`SPDX-License-Identifier: BSD-3-Clause OR GPL-2\.0-only`).Match(text) {
		return text
	}
	gpl := regexp.MustCompile(`(?m)^-+\nGPL v2\.0:`).FindIndex(text)
	if gpl == nil {
		return text
	}
	return append(text[:gpl[0]:gpl[0]], "(Also offered under GPL-2.0-only; distributed here under BSD-3-Clause.)\n"...)
}

func classify(text string) string {
	t := strings.Join(strings.Fields(text), " ")
	switch {
	case strings.Contains(t, "Apache License") && strings.Contains(t, "Version 2.0"):
		return "Apache-2.0"
	case strings.Contains(t, "Mozilla Public License") && strings.Contains(t, "2.0"):
		return "MPL-2.0"
	case strings.Contains(t, "Permission is hereby granted, free of charge"):
		return "MIT"
	case strings.Contains(t, "Redistribution and use in source and binary forms") && (strings.Contains(t, "Neither the name") || strings.Contains(t, "The name of any author may not be used to endorse")):
		return "BSD-3-Clause"
	case strings.Contains(t, "Redistribution and use in source and binary forms"):
		return "BSD-2-Clause"
	case strings.Contains(t, "Permission to use, copy, modify, and/or distribute this software for any purpose"):
		return "ISC"
	}
	return ""
}

func writeNotices(w io.Writer, modules []module) error {
	fmt.Fprintf(w, "consul_conn_exporter is licensed under the Apache License 2.0 (LICENSE).\n")
	fmt.Fprintf(w, "It is statically linked with the following %d Go modules, under their own licences.\n", len(modules))
	for _, m := range modules {
		fmt.Fprintf(w, "\n%s\n%s %s\nLicence: %s\n\n%s\n", strings.Repeat("=", 78), m.path, m.version, m.id, strings.TrimRight(m.text, "\n"))
	}
	return nil
}

// writeDebian writes the copyright file of the Debian package: the
// exporter's own stanza, one per linked module, and the texts of the
// licences that Debian does not ship in /usr/share/common-licenses.
func writeDebian(w io.Writer, modules []module) error {
	fmt.Fprint(w, `Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: consul-conn-exporter
Source: https://github.com/consul-conn-exporter/consul-conn-exporter

Files: *
Copyright: 2026 the consul-conn-exporter authors
License: Apache-2.0
`)
	texts := map[string]string{}
	var order []string
	for _, m := range modules {
		copyright := m.copyright
		if len(copyright) == 0 {
			copyright = []string{"the authors of " + m.path}
		}
		fmt.Fprintf(w, "\nFiles: go-modules/%s\nCopyright: %s\nLicense: %s\nComment: %s %s, statically linked into /usr/bin/consul_conn_exporter\n",
			m.path, strings.Join(copyright, "\n "), m.id, m.path, m.version)
		if _, seen := texts[m.id]; !seen {
			texts[m.id] = m.text
			order = append(order, m.id)
		}
	}
	commonLicenses := map[string]string{"Apache-2.0": "Apache-2.0", "MPL-2.0": "MPL-2.0"}
	if _, ok := texts["Apache-2.0"]; !ok {
		order = append(order, "Apache-2.0")
	}
	for _, id := range order {
		fmt.Fprintf(w, "\nLicense: %s\n", id)
		if file, ok := commonLicenses[id]; ok {
			fmt.Fprintf(w, " On Debian systems, the complete text of the license can be found in\n /usr/share/common-licenses/%s.\n", file)
			continue
		}
		for _, line := range strings.Split(strings.TrimRight(texts[id], "\n"), "\n") {
			if strings.TrimSpace(line) == "" {
				line = "."
			}
			fmt.Fprintf(w, " %s\n", line)
		}
	}
	return nil
}
