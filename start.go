package main

import (
	"context"
	"errors"
	"fmt"
	"slices"

	"github.com/cilium/ebpf/btf"

	"github.com/consul-conn-exporter/consul-conn-exporter/capabilities"
	"github.com/consul-conn-exporter/consul-conn-exporter/events"
	"github.com/consul-conn-exporter/consul-conn-exporter/listeners"
	"github.com/consul-conn-exporter/consul-conn-exporter/owners"
	"github.com/consul-conn-exporter/consul-conn-exporter/refusals"
)

// start loads the kernel programs of the features enabled (the events'
// counts; the refusals' counter; the list of open files that names
// programs), then confines the exporter and every program it runs to the
// capabilities its features still need: past this step nothing privileged
// can be done, root included. The maps are read once then, as they will
// be.
// Counts or refusals that cannot be kept as asked are an error (no other
// source stands in for --source events: it was asked for by name);
// programs that cannot be named from the kernel are named by walking /proc.
func start(s *setup) error {
	kernel := btf.NewCache() // the kernel's types, read once for every program
	var ports [][]uint16
	for _, g := range s.config.Groups {
		ports = append(ports, g.Ports)
	}
	// The kernel programs count only the connections the agent's listeners
	// accepted, as the listeners are judged now, and at every collection.
	var users map[uint16]uint32
	if s.events != nil || s.refusals {
		users = listeners.KernelUsers(s.collector.Agent(context.Background()), s.config.Ports(), refusals.AnyUser, refusals.UntoldUser)
	}
	var counts *events.Counter
	if s.events != nil {
		var err error
		if counts, err = events.Load(kernel, ports, s.config.States, s.events.Keys, users); err != nil {
			return err
		}
	}
	var counter *refusals.Counter
	if s.refusals {
		var err error
		var shared *refusals.Counts
		if counts != nil {
			shared = counts.Shared()
		}
		if counter, err = refusals.Load(kernel, ports, shared, users); err != nil {
			closeAll(counts, nil, nil)
			return err
		}
	}
	var lister *owners.Iterator
	if s.config.Processes && s.config.ProcessesFromKernel {
		var err error
		if lister, err = owners.LoadIterator(kernel); err != nil {
			s.logger.Info("naming the programs by walking /proc: the kernel program that lists open files cannot be loaded", "err", err)
		}
	}
	if missing := capabilities.Missing(s.commandCaps...); len(missing) > 0 {
		closeAll(counts, counter, lister)
		return fmt.Errorf("--command.capabilities: the exporter does not hold %s to give its command: run it as root, or grant it (systemd AmbientCapabilities=, Kubernetes securityContext.capabilities.add)", capabilities.Names(missing))
	}
	keep := slices.Clone(s.commandCaps)
	if s.config.Processes { // the walk of /proc, if the list cannot be read
		keep = append(keep, capabilities.DACReadSearch, capabilities.SysPtrace)
	}
	keep, err := capabilities.Confine(keep...)
	if errors.Is(err, capabilities.ErrThreadsOutOfReach) && counter == nil && counts == nil {
		// Nothing loaded needs confining: run on as started, and say so.
		closeAll(nil, nil, lister)
		s.logger.Warn("keeping the capabilities the exporter started with", "err", err)
		return nil
	}
	if err == nil && counts != nil {
		err = counts.Check()
	}
	if err == nil && counter != nil {
		err = counter.Check()
	}
	if err != nil {
		closeAll(counts, counter, lister)
		return err
	}
	if counts != nil {
		s.collector.CountFromEvents(counts, counts.Snapshot)
		s.limits.ExcludeOwn(counts) // its reads of the limits are not the agent's clients
		s.source = counts.String()
		interval, logger := s.events.AuditInterval, s.logger
		s.audit = func(ctx context.Context) { counts.AuditEvery(ctx, interval, logger) }
	}
	if counter != nil {
		limits := s.limits
		s.collector.CountRefusals(func(top int, agent refusals.Agent) (refusals.Snapshot, error) {
			snap, err := counter.Snapshot(top, agent)
			if snap.Pending > 0 {
				limits.ReadSoon() // to count them or not
			}
			return snap, err
		})
	}
	if counts != nil || counter != nil {
		watched := s.config.Ports()
		s.collector.TellAgent(func(a listeners.Agent) error {
			users := listeners.KernelUsers(&a, watched, refusals.AnyUser, refusals.UntoldUser)
			if counts != nil {
				if err := counts.Trust(users); err != nil {
					return err
				}
			}
			if counter != nil {
				return counter.Trust(users)
			}
			return nil
		})
	}
	if lister != nil {
		if err := lister.Check(); err != nil {
			lister.Close()
			s.logger.Info("naming the programs by walking /proc: the kernel's list of open files cannot be read", "err", err)
		} else {
			s.collector.NameProgramsFrom(lister)
			s.logger.Info("naming the programs from the kernel's list of open files")
			if keep, err = capabilities.Confine(s.commandCaps...); err != nil { // nor the walk's
				return err
			}
		}
	}
	s.logger.Info("capabilities dropped", "kept", capabilities.Names(keep))
	return nil
}

// closeAll closes the kernel programs loaded, when the start fails.
func closeAll(counts *events.Counter, counter *refusals.Counter, lister *owners.Iterator) {
	if counts != nil {
		counts.Close()
	}
	if counter != nil {
		counter.Close()
	}
	if lister != nil {
		lister.Close()
	}
}
