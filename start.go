package main

import (
	"context"
	"errors"
	"fmt"
	"slices"

	"github.com/cilium/ebpf/btf"

	"github.com/consul-conn-exporter/consul-conn-exporter/internal/capabilities"
	"github.com/consul-conn-exporter/consul-conn-exporter/internal/collector"
	"github.com/consul-conn-exporter/consul-conn-exporter/internal/events"
	"github.com/consul-conn-exporter/consul-conn-exporter/internal/kernel"
	"github.com/consul-conn-exporter/consul-conn-exporter/internal/limits"
	"github.com/consul-conn-exporter/consul-conn-exporter/internal/listeners"
	"github.com/consul-conn-exporter/consul-conn-exporter/internal/owners"
	"github.com/consul-conn-exporter/consul-conn-exporter/internal/refusals"
	"github.com/consul-conn-exporter/consul-conn-exporter/internal/table/source"
)

// exporter is what start makes of a config: built once, never changed.
type exporter struct {
	collector *collector.Collector
	limits    *limits.Source
	audit     func(context.Context) // the events' audit, nil without them
	noTool    error                 // no tool can print the table: only check reports on
}

// start makes the exporter, one step after another: it judges the
// listeners, loads the kernel programs of the features enabled (told whose
// connections count), confines the process, and builds the collector and
// the limits' source from what loaded.
func start(cfg *config) (*exporter, error) {
	var watch *listeners.Watch
	var agent *listeners.Agent
	if cfg.agentAddr != nil {
		watch = listeners.NewWatch(cfg.agentAddr, cfg.agentUser, cfg.counting.Ports(), cfg.source.Timeout())
		// Judged before the programs load (they count only the agent's
		// connections) and before the first read of the limits (it goes
		// to the agent's listener, never to what else answers at its name).
		agent = watch.Now(context.Background())
	}
	k, err := load(cfg, agent)
	if err != nil {
		return nil, err
	}
	parts := collector.Parts{Listeners: watch}
	reach := limits.Reach{}
	if watch != nil {
		reach.At = watch.Address().Agent
	}
	ex := &exporter{}
	if k.counts != nil {
		parts.Source, parts.Events = k.counts, k.counts.Snapshot
		reach.Own = k.counts // its reads of the limits are not the agent's clients
		interval, logger := cfg.events.AuditInterval, cfg.logger
		ex.audit = func(ctx context.Context) { k.counts.AuditEvery(ctx, interval, logger) }
	} else if parts.Source, err = cfg.source.New(cfg.counting.Want(), cfg.logger); errors.Is(err, source.ErrNoTool) {
		ex.noTool = err
	} else if err != nil {
		k.close()
		return nil, err
	}
	if ex.limits, err = limits.NewSource(cfg.limits, reach, cfg.logger); err != nil {
		k.close()
		return nil, err
	}
	parts.Limits = ex.limits.Snapshot
	if k.counter != nil {
		lim := ex.limits
		parts.Refusals = func(top int, agent refusals.Agent) (refusals.Snapshot, error) {
			snap, err := k.counter.Snapshot(top, agent)
			if snap.Pending > 0 {
				lim.ReadSoon() // to count them or not
			}
			return snap, err
		}
	}
	if k.counts != nil || k.counter != nil {
		watched := cfg.counting.Ports()
		parts.Tell = func(a listeners.Agent) error {
			users := listeners.KernelUsers(&a, watched, kernel.AnyUser, kernel.UntoldUser)
			if k.counts != nil {
				if err := k.counts.Trust(users); err != nil {
					return err
				}
			}
			if k.counter != nil {
				return k.counter.Trust(users)
			}
			return nil
		}
	}
	if k.lister != nil {
		parts.Owners = k.lister
	}
	ex.collector = collector.New(cfg.counting, parts, cfg.logger)
	return ex, nil
}

// loaded are the kernel programs loaded, each nil where its feature is off
// or (the lister) could not be loaded.
type loaded struct {
	counts  *events.Counter
	counter *refusals.Counter
	lister  *owners.Iterator
}

func (k loaded) close() {
	if k.counts != nil {
		k.counts.Close()
	}
	if k.counter != nil {
		k.counter.Close()
	}
	if k.lister != nil {
		k.lister.Close()
	}
}

// load loads the kernel programs of the features enabled (the events'
// counts; the refusals' counter; the list of open files that names
// programs), told whose connections count as agent says (nil: not known),
// then
// confines the exporter and every program it runs to the capabilities its
// features still need: past this step nothing privileged can be done, root
// included. The maps are read once then, as they will be.
// Counts or refusals that cannot be kept as asked are an error (no other
// source stands in for --source events: it was asked for by name);
// programs that cannot be named from the kernel are named by walking /proc.
func load(cfg *config, agent *listeners.Agent) (loaded, error) {
	var k loaded
	types := btf.NewCache() // the kernel's types, read once for every program
	var ports [][]uint16
	for _, g := range cfg.counting.Groups {
		ports = append(ports, g.Ports)
	}
	var users map[uint16]uint32
	if cfg.events != nil || cfg.refusals {
		users = listeners.KernelUsers(agent, cfg.counting.Ports(), kernel.AnyUser, kernel.UntoldUser)
	}
	var err error
	if cfg.events != nil {
		if k.counts, err = events.Load(types, ports, cfg.counting.States, cfg.events.Keys, users, cfg.counting.WhatIfLimits()); err != nil {
			return k, err
		}
		if err := k.counts.Uses(); err != nil {
			cfg.logger.Warn("cannot tell what each slot is doing", "err", err)
		}
	}
	if cfg.refusals {
		var shared *kernel.SharedMaps
		if k.counts != nil {
			shared = k.counts.Shared()
		}
		if k.counter, err = refusals.Load(types, ports, shared, users); err != nil {
			k.close()
			return loaded{}, err
		}
	}
	if cfg.counting.Processes && cfg.counting.ProcessesFromKernel {
		if k.lister, err = owners.LoadIterator(types); err != nil {
			cfg.logger.Info("naming the programs by walking /proc: the kernel program that lists open files cannot be loaded", "err", err)
		}
	}
	if missing := capabilities.Missing(cfg.commandCaps...); len(missing) > 0 {
		k.close()
		return loaded{}, fmt.Errorf("--command.capabilities: the exporter does not hold %s to give its command: run it as root, or grant it (systemd AmbientCapabilities=, Kubernetes securityContext.capabilities.add)", capabilities.Names(missing))
	}
	keep := slices.Clone(cfg.commandCaps)
	if cfg.counting.Processes { // the walk of /proc, if the list cannot be read
		keep = append(keep, capabilities.DACReadSearch, capabilities.SysPtrace)
	}
	keep, err = capabilities.Confine(keep...)
	if errors.Is(err, capabilities.ErrThreadsOutOfReach) && k.counter == nil && k.counts == nil {
		// Nothing loaded needs confining: run on as started, and say so.
		k.close()
		cfg.logger.Warn("keeping the capabilities the exporter started with", "err", err)
		return loaded{}, nil
	}
	if err == nil && k.counts != nil {
		err = k.counts.Check()
	}
	if err == nil && k.counter != nil {
		err = k.counter.Check()
	}
	if err != nil {
		k.close()
		return loaded{}, err
	}
	if k.lister != nil {
		if err := k.lister.Check(); err != nil {
			k.lister.Close()
			k.lister = nil
			cfg.logger.Info("naming the programs by walking /proc: the kernel's list of open files cannot be read", "err", err)
		} else {
			cfg.logger.Info("naming the programs from the kernel's list of open files")
			if keep, err = capabilities.Confine(cfg.commandCaps...); err != nil { // nor the walk's
				k.close()
				return loaded{}, err
			}
		}
	}
	cfg.logger.Info("capabilities dropped", "kept", capabilities.Names(keep))
	return k, nil
}
