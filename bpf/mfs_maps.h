/* SPDX-License-Identifier: GPL-2.0 */
/*
 * mfs-tc map contract, layout version 6.
 *
 * The maps are the contract between the controller (any process that opens the pins under
 * /sys/fs/bpf/mfs/<netns>/<ifname>/) and the tc egress classifier. Python mirrors every
 * struct in mfs_tc/layout.py; tests/test_layout.py checks the two agree. Any change here
 * bumps MFS_LAYOUT_VERSION.
 *
 * Who writes what (version 2): a flow has a DECISION (struct mfs_flow_entry, written only by
 * the controller) and a STATE (struct mfs_flow_state, written only by the kernel: bytes sent,
 * current level). They live in different maps, so no user-space write can lose or misplace a
 * kernel count. The entry's `gen` names one registration: when the kernel finds a state whose
 * gen differs (a new registration of the same 5-tuple or socket), it restarts the state at the
 * entry's sent_base; a rewrite of the decision that keeps gen keeps the counts.
 *
 * Two places hold decisions:
 *   sk_flows / sk_state   socket-local storage (BPF_MAP_TYPE_SK_STORAGE), keyed by the socket:
 *                         written from user space with the socket's fd as the key, read through
 *                         skb->sk; lives and dies with the socket (no gc, no eviction).
 *   flows / flow_state    5-tuple hashes: traffic without a local socket of ours (forwarded,
 *                         other processes, a controller that is not the sender). `flows` never
 *                         evicts (BPF_F_NO_PREALLOC hash: full is a clear error to the
 *                         controller, and a replaced element is freed only after an RCU grace
 *                         period, so no program reads a recycled one); `flow_state` is an LRU
 *                         that only the kernel inserts into (a state lost under pressure
 *                         restarts at sent_base). A packet of a flow whose entry is gone gets
 *                         the default level (its control packets the control level).
 *
 * Level evaluation (one threshold table per flow, PIAS-style, tunable at run time):
 *   metric = f(mode, entry, now, sent, request cursor)     (saturating: see mfs_classifier.c)
 *   i      = number of j < nthresh with metric >= thresh[j]      (thresh ascending)
 *   level  = lvl[i]            (a level >= nlevels: the default level, counted as bad_level)
 * then: request scavenged (or MFS_F_AUTO_SCAVENGE and deadline passed or MLU > 1) -> scavenger level;
 *       MFS_F_MONOTONIC: level = min(level, cur_level)  (a live flow is only ever promoted;
 *       cur_level is lowered with compare-and-swap, so a race between CPUs cannot undo it).
 *
 * Rules (version 3): a packet of a TCP/UDP flow with no exact entry (socket storage, 5-tuple
 * map) is matched against `rules`, an array of at most MFS_RULES_MAX struct mfs_rule in priority
 * order (slot 0 first); the table ends at the first slot whose id is 0. The first rule that
 * matches (prefixes, port ranges, protocol, family) gives the packet its level; its packets and
 * bytes are counted in `rule_stats[rule.cslot]` (per-CPU, kernel-written; the rule's counter
 * slot stays with the rule when the table is reordered). User space orders its slot writes so
 * that between writes the table is the old or the new one with at most one rule present twice
 * (a packet read during the copy of one slot may see a mix of the two rules involved).
 *
 * Cursors (version 4): a request's layer cursor lives in `cursors`, a BPF_F_MMAPABLE array that
 * the controller maps into its memory and writes with one aligned 32-bit store (no syscall),
 * at the slot its record names (request.slot). The controller owns the slot through
 * `cursor_owners` (slot -> request key and owner, inserted with BPF_NOEXIST: two controllers
 * never share one); it frees it when the request ends, gc frees the slots of dead owners. A
 * record with slot MFS_SLOT_NONE (no mmapable array on this kernel, or a controller without
 * access to it) keeps its cursor in the record itself (request.cursor, one update syscall).
 *
 * Request slots (version 5): an entry of a request names the request's cursor slot too
 * (entry.slot), and the slot holds what the classifier needs of the request: its cursor, its
 * flags (MFS_R_SCAVENGER) and its key. Where the slot's request_key is the entry's request_id,
 * the packet's request is read there (one array access, no hash lookup); else (MFS_SLOT16_NONE,
 * a slot freed or taken by another request since) from the `requests` record as before. The
 * controller claims a slot, writes its cursor and flags, then its key; it sets the flags in the
 * slot and in the record alike; it clears the key before it frees the slot.
 *
 * State slots (version 6): a registration's kernel state lives at the slot of `states` (an
 * array; BPF_F_MMAPABLE where the kernel has it) that its entry names (entry.state), where that
 * slot's `owner` is the entry's gen: one array access (inlined) instead of a second socket-storage
 * get or 5-tuple lookup. `owner` is the one word of a state that user space writes: the
 * controller sets it to the gen of the registration it gives the slot to (after zeroing the
 * slot's gen, so the kernel restarts the state at the entry's sent_base on its first packet)
 * and clears it before it gives the slot up; the kernel writes everything else, as in
 * sk_state and flow_state. An entry naming MFS_STATE_NONE, or a slot another registration owns
 * (a stale entry), keeps its state in sk_state / flow_state as before (counted as
 * state_lookup). Controllers own slots in chunks of MFS_STATE_CHUNK (`state_owners`, chunk ->
 * owner, inserted with BPF_NOEXIST), so a registration claims its slot without a syscall.
 *
 * Unknown flows never get a level because their entry is missing: pure control packets (TCP
 * SYN, FIN, RST, or an ACK without payload) get config.control_level, everything else
 * config.default_level. Untracked traffic (no entry, ICMP, fragments) leaves with the DSCP of
 * the level it got, unless its DSCP is in config.keep_dscp (a bit per DSCP value).
 */
#ifndef MFS_MAPS_H
#define MFS_MAPS_H

#define MFS_LAYOUT_MAGIC   0x4d465331u /* "MFS1" */
#define MFS_LAYOUT_VERSION 6u
#define MFS_MAX_LEVELS     8
#define MFS_MAX_THRESH     (MFS_MAX_LEVELS - 1)
#define MFS_MLU_ONE        65536ll     /* MLU fixed point: 1.0 */
#define MFS_MLU_CAP        (64ll * MFS_MLU_ONE)
#define MFS_DSCP_KEEP      0xff
#define MFS_LEVEL_NONE     0xff        /* state.cur_level before the first packet */

/* flow entry modes: what the metric is */
#define MFS_MODE_STATIC    0 /* metric = 0 (table with nthresh=0: level = lvl[0])           */
#define MFS_MODE_MLU       1 /* metric = MLU * 65536 = remaining*ps_per_byte/1000/(deadline-now) */
#define MFS_MODE_RLI       2 /* metric = target_layer - the request's cursor (its slot's)    */
#define MFS_MODE_LAXITY    3 /* metric = base_ns + sent*ps_per_byte/1000 - now   (ns, signed) */
#define MFS_MODE_SENT      4 /* metric = sent bytes (PIAS: demote as bytes are sent)         */
#define MFS_MODE_REMAINING 5 /* metric = max(total - sent, 0) (SRPT)                         */

/* flow entry flags */
#define MFS_F_MONOTONIC      0x01 /* never demote a live flow (min with cur_level)            */
#define MFS_F_AUTO_SCAVENGE  0x02 /* mlu only: deadline passed or MLU > 1 -> scavenger level      */
#define MFS_F_ROUND_FIRST    0x04 /* reserved                                                  */

/* flow state flags (kernel) */
#define MFS_S_ACKED          0x01 /* a TCP packet with ACK was sent: the connection was set up   */

/* request flags */
#define MFS_R_SCAVENGER      0x01

/* config flags */
#define MFS_C_TRUST_DSCP     0x01 /* switch port: level from the packet's DSCP                 */

/* stats slots (per-CPU array, value struct mfs_counter) */
#define MFS_STAT_LEVEL0     0   /* 0..7: packets/bytes sent at that level                        */
#define MFS_STAT_MISS       8   /* IP packet with payload and no flow entry (default level)     */
#define MFS_STAT_MALFORMED  9   /* truncated / malformed headers (default level, untouched)     */
#define MFS_STAT_NONIP      10  /* not IPv4/IPv6 (ARP, LLDP, ...)                               */
#define MFS_STAT_FRAGMENT   11  /* IPv4 fragment (non-first or first) / IPv6 fragment header    */
#define MFS_STAT_NOL4       12  /* IP but neither TCP nor UDP (ICMP, ...)                       */
#define MFS_STAT_HIT        13  /* flow entry found (5-tuple map), or trust-dscp                */
#define MFS_STAT_SCAVENGED  14  /* packets sent at the scavenger level because of a request flag */
#define MFS_STAT_DSCP_SET   15  /* DSCP rewritten                                               */
#define MFS_STAT_SK_HIT     16  /* flow entry found in socket storage                           */
#define MFS_STAT_CONTROL    17  /* unknown flow, pure control packet (control level)            */
#define MFS_STAT_ORPHAN     18  /* reserved (not counted: it would cost the miss path a lookup)  */
#define MFS_STAT_STALE      19  /* SYN (no ACK) on a request's entry whose connection was set up: deleted */
#define MFS_STAT_BAD_LEVEL  20  /* entry chose a level >= nlevels: default level used           */
#define MFS_STAT_RULE       21  /* no exact entry, a rule matched (its level)                   */
#define MFS_STAT_REQ_RECORD 22  /* request read from its record: the entry names no slot, or its
                                 * slot holds another request (version 5)                       */
#define MFS_STAT_STATE_LOOKUP 23 /* an entry's state looked up in sk_state / flow_state: it names
                                 * no state slot, or one it does not own (version 6)           */
#define MFS_NSTATS          24

/* cursors (version 4) */
#define MFS_CURSORS_MAX     16384       /* = MFS_REQUESTS_MAX: one slot per request record      */
#define MFS_SLOT_NONE       0xffffffffu /* request.slot: the cursor is request.cursor           */
#define MFS_SLOT16_NONE     0xffffu     /* entry.slot: no slot named, read the request record   */

/* state slots (version 6) */
#define MFS_STATES_MAX      65536       /* = MFS_FLOWS_MAX                                      */
#define MFS_STATE_CHUNK     64          /* slots a controller claims at once (state_owners)     */
#define MFS_STATE_CHUNKS    1024        /* = MFS_STATES_MAX / MFS_STATE_CHUNK                   */
#define MFS_STATE_NONE      0xffffffffu /* entry.state: no slot, the state is looked up          */

/* rules (version 3): an ordered table scanned on the exact-entry miss path, first match wins */
#define MFS_RULES_MAX       64

/* 5-tuple; IPv4 addresses as IPv4-mapped IPv6 (::ffff:a.b.c.d); ports in host byte order */
struct mfs_flow_key {
	__u8  saddr[16];
	__u8  daddr[16];
	__u16 sport;
	__u16 dport;
	__u8  proto;
	__u8  pad[3];
};                                                   /* 40 bytes */

/* The decision: written by the controller only (flows, sk_flows). */
struct mfs_flow_entry {
	__u8  mode;          /* MFS_MODE_*                                                    */
	__u8  flags;         /* MFS_F_*                                                       */
	__u8  nthresh;       /* thresholds used, 0..7                                         */
	__u8  rsvd0;
	__u8  lvl[8];        /* level for each threshold index 0..nthresh                     */
	__u32 target_layer;  /* rli                                                           */
	__u16 stage;         /* informational: 0 other, 1 kv_fetch, 2 collective, 3 p2d       */
	__u16 slot;          /* request_id's cursor slot, or MFS_SLOT16_NONE (version 5)      */
	__u32 gen;           /* registration id; a different gen restarts the kernel's state  */
	__u64 request_id;    /* key in `requests` (0: none)                                   */
	__s64 deadline_ns;   /* mlu: deadline; laxity: base (CLOCK_MONOTONIC ns)              */
	__u64 total_bytes;   /* mlu, remaining: bytes this flow carries                       */
	__u64 ps_per_byte;   /* mlu, laxity: picoseconds per byte at the reference rate       */
	__s64 thresh[7];     /* ascending; units of the mode's metric                         */
	__u64 sent_base;     /* bytes already sent at registration: where the state starts    */
	__s64 created_ns;    /* when the controller registered the flow                       */
	__u32 state;         /* this registration's slot in `states`, or MFS_STATE_NONE (v6)  */
	__u32 rsvd1;
};                                                   /* 136 bytes */

/* The state: written by the kernel only (flow_state, sk_state, states), but for `owner` in
 * `states`. 64-bit fields for the atomics. */
struct mfs_flow_state {
	__u64 gen;           /* the entry gen these counts belong to                          */
	__u64 cur_level;     /* last level chosen (MONOTONIC: lowest so far); MFS_LEVEL_NONE  */
	__u64 sent_bytes;    /* sent_base + L4 payload bytes seen (atomic add)                */
	__u64 sent_pkts;     /* packets seen                                                  */
	__u64 flags;         /* MFS_S_*                                                       */
	__u64 owner;         /* states: the gen whose entries count here (controller); 0: free */
};                                                   /* 48 bytes */

struct mfs_request {
	__s32 cursor;        /* compute layer the request (its batch) is at, if slot is NONE  */
	__u32 flags;         /* MFS_R_*                                                       */
	__s64 deadline_ns;   /* for gc and status                                             */
	__u64 owner_pid;     /* process that registered it, as its own pid namespace sees it  */
	__u64 owner_start;   /* its start time (clock ticks after boot, /proc/PID/stat field 22) */
	__u64 owner_pidns;   /* inode of its pid namespace (/proc/PID/ns/pid)                 */
	__u32 slot;          /* its cursor's index in `cursors`, or MFS_SLOT_NONE             */
	__u32 rsvd;
};                                                   /* 48 bytes */

/* One slot of `cursors` (BPF_F_MMAPABLE array): written by the controller through its mmap. */
struct mfs_cursor {
	__s32 cursor;        /* compute layer the request (its batch) is at                   */
	__u32 flags;         /* MFS_R_*, as in the request's record (version 5)               */
	__u64 request_key;   /* the request's key in `requests`; 0: the slot is free          */
};                                                   /* 16 bytes */

/* Who owns a cursor slot (`cursor_owners`, slot -> owner) or a chunk of state slots
 * (`state_owners`, chunk -> owner; request_key 0): user space only. */
struct mfs_cursor_owner {
	__u64 request_key;   /* the request's key in `requests` (informational)               */
	__u64 owner_pid;     /* as in struct mfs_request                                      */
	__u64 owner_start;
	__u64 owner_pidns;
};                                                   /* 32 bytes */

struct mfs_level {
	__u32 priority;      /* skb->priority for this level (qdisc class handle or band)     */
	__u8  dscp;          /* DSCP to write, or MFS_DSCP_KEEP                                */
	__u8  pad[3];
};                                                   /* 8 bytes */

struct mfs_config {
	__u32 magic;         /* MFS_LAYOUT_MAGIC                                              */
	__u32 version;       /* MFS_LAYOUT_VERSION                                            */
	__u32 nlevels;
	__u32 default_level; /* payload of unknown flows, non-IP, malformed, fragments, ICMP   */
	__u32 scavenger_level;
	__u32 flags;         /* MFS_C_*                                                       */
	__u32 control_level; /* pure control packets (SYN/FIN/RST/pure ACK) of unknown flows  */
	__u32 rsvd;
	__u64 keep_dscp;     /* bit d: untracked traffic sent with DSCP d keeps it            */
	__u8  dscp2level[64];/* trust-dscp                                                    */
};                                                   /* 104 bytes */

/* One rule: matches when every given field matches. Addresses as in the flow key (IPv4-mapped);
 * a prefix is a network and a mask (bytes), "any" is mask 0. Ports in host byte order, ranges
 * inclusive (0..65535: any). Written by user space only. */
struct mfs_rule {
	__u64 src[2];        /* source network (16 bytes, as in mfs_flow_key.saddr)           */
	__u64 smask[2];      /* source mask                                                   */
	__u64 dst[2];        /* destination network                                           */
	__u64 dmask[2];      /* destination mask                                              */
	__u16 sport_lo;
	__u16 sport_hi;
	__u16 dport_lo;
	__u16 dport_hi;
	__u8  proto;         /* 0 any, 6 TCP, 17 UDP                                          */
	__u8  family;        /* 0 any, 4 IPv4 only, 6 IPv6 only                               */
	__u8  level;         /* level of matching packets                                     */
	__u8  stage;         /* 0 none, else the stage code whose level this is (status)      */
	__u32 id;            /* rule id shown to operators; 0 ends the table                  */
	__u32 cslot;         /* slot of this rule's counter in rule_stats (0..MFS_RULES_MAX-1)*/
	__u32 rsvd;
};                                                   /* 88 bytes */

struct mfs_counter {
	__u64 packets;
	__u64 bytes;
};

#endif
