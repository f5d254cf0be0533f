"""The netns testbed: an emulated disaggregated-serving cluster in network namespaces.

  topology.py          hosts and switch as namespaces, veth links, HTB shaping, cleanup
  shaping.py           mfs-tc attach (HTB backend, trust-dscp on switch ports) or plain HTB
  transfer.py          sinks and real TCP flows (delivered bytes acknowledged)
  plan.py              what is replayed: the workload's RequestSpec and BatchPlan (no types of
                       its own), ReplayScenario, a generated workload as one
  scenarios.py         hand-made scenarios (the tight vs loose contention case)
  sched.py             flows, batches and layer cursors through mfs_tc.controller
  replay.py            the agents: batches, layers, compute sleeps, per-request measurements
  runner.py            `mfs-tc testbed run`: every policy in turn, progress, results

Results (requests.csv, summary.json, plots, tables) are mfs_tc.results, shared with the simulator.
Only plan.py and scenarios.py import without root; the rest needs root at run time.
"""
