// SPDX-License-Identifier: GPL-2.0
/*
 * mfs-tc egress classifier (tc clsact egress, direct action), compiled by bcc at attach.
 *
 * Per packet: parse Ethernet (+ up to two VLAN tags: 802.1Q, 802.1ad QinQ), IPv4 (options) or
 * IPv6 (extension headers), TCP or UDP. The flow's decision comes from the sending socket's
 * local storage (skb->sk, sk_flows) when it has one, else from the 5-tuple map (flows). Its
 * threshold table is evaluated (see mfs_maps.h) at CLOCK_MONOTONIC now (a TCP segment's own
 * departure stamp, else bpf_ktime_get_ns()); skb->priority is written
 * from `levels` and, when the level has one, the DSCP (ECN bits kept, IPv4 header checksum
 * fixed); bytes are counted into the flow's kernel state (at the state slot its entry names,
 * else looked up by socket or 5-tuple) and per level. In trust-dscp mode
 * (switch ports) the level comes from the packet's DSCP instead.
 *
 * It never drops: unknown flows, non-IP, fragments, truncated or malformed headers are
 * counted and go to the default level (pure control packets of unknown flows: the control
 * level); malformed and non-IP packets leave untouched, other untracked IP traffic leaves with
 * the DSCP of its level unless config.keep_dscp keeps it. Headers are read straight from the
 * linear part of the packet, or with bpf_skb_load_bytes where they are not (paged skbs).
 *
 * Arithmetic saturates (products at 2^64-1, signed sums at the s64 limits); FlowEntry.metric()
 * in mfs_tc/entry.py is the exact mirror.
 *
 * The loader substitutes MFS_PIN_DIR (the pin directory of this interface) before compiling;
 * -DMFS_NO_SK_STORAGE builds the 5-tuple-only variant for kernels without socket storage.
 */
#include <uapi/linux/bpf.h>
#include <uapi/linux/if_ether.h>
#include <uapi/linux/in.h>
#include <uapi/linux/ip.h>
#include <uapi/linux/ipv6.h>
#include <uapi/linux/pkt_cls.h>
#include <uapi/linux/tcp.h>
#include <uapi/linux/udp.h>

#include "mfs_maps.h"

#ifndef MFS_FLOWS_MAX
#define MFS_FLOWS_MAX 65536
#endif
#ifndef MFS_REQUESTS_MAX
#define MFS_REQUESTS_MAX 16384
#endif
/* the cursor array is mapped into the controllers' memory; -DMFS_NO_MMAP_CURSORS for kernels
 * before 5.5 (no BPF_F_MMAPABLE): controllers then keep cursors in the request records */
#ifdef MFS_NO_MMAP_CURSORS
#define MFS_CURSORS_FLAGS 0
#else
#define MFS_CURSORS_FLAGS BPF_F_MMAPABLE
#endif

/* Maps that user space updates are BPF_F_NO_PREALLOC hashes: an update frees the replaced
 * element only after an RCU grace period, so a program running on another CPU never reads (or
 * counts into) an element recycled for another key. (Preallocated and LRU hashes recycle it at
 * once.) The kernel-written state map is an LRU: only the kernel inserts, never user space. */
BPF_TABLE_PINNED("hash", struct mfs_flow_key, struct mfs_flow_entry, flows, MFS_FLOWS_MAX,
		 MFS_PIN_DIR "/flows", BPF_F_NO_PREALLOC);
BPF_TABLE_PINNED("lru_hash", struct mfs_flow_key, struct mfs_flow_state, flow_state, MFS_FLOWS_MAX,
		 MFS_PIN_DIR "/flow_state");
BPF_TABLE_PINNED("hash", __u64, struct mfs_request, requests, MFS_REQUESTS_MAX,
		 MFS_PIN_DIR "/requests", BPF_F_NO_PREALLOC);
BPF_TABLE_PINNED("array", __u32, struct mfs_cursor, cursors, MFS_CURSORS_MAX, MFS_PIN_DIR "/cursors",
		 MFS_CURSORS_FLAGS);
/* state slots (version 6): mapped by the controllers like the cursors (they write `owner`) */
BPF_TABLE_PINNED("array", __u32, struct mfs_flow_state, states, MFS_STATES_MAX, MFS_PIN_DIR "/states",
		 MFS_CURSORS_FLAGS);
/* user space only (slot ownership across controllers); declared so attach creates and pins them */
BPF_TABLE_PINNED("hash", __u32, struct mfs_cursor_owner, cursor_owners, MFS_CURSORS_MAX,
		 MFS_PIN_DIR "/cursor_owners", BPF_F_NO_PREALLOC);
BPF_TABLE_PINNED("hash", __u32, struct mfs_cursor_owner, state_owners, MFS_STATE_CHUNKS,
		 MFS_PIN_DIR "/state_owners", BPF_F_NO_PREALLOC);
BPF_TABLE_PINNED("array", __u32, struct mfs_level, levels, MFS_MAX_LEVELS, MFS_PIN_DIR "/levels");
BPF_TABLE_PINNED("array", __u32, struct mfs_config, config, 1, MFS_PIN_DIR "/config");
BPF_TABLE_PINNED("percpu_array", __u32, struct mfs_counter, stats, MFS_NSTATS,
		 MFS_PIN_DIR "/stats");
BPF_TABLE_PINNED("array", __u32, struct mfs_rule, rules, MFS_RULES_MAX, MFS_PIN_DIR "/rules");
BPF_TABLE_PINNED("percpu_array", __u32, struct mfs_counter, rule_stats, MFS_RULES_MAX,
		 MFS_PIN_DIR "/rule_stats");

#ifndef MFS_NO_SK_STORAGE
/* bcc's BPF_SK_STORAGE, pinned: socket-local storage needs BTF, which bcc generates */
#define MFS_SK_STORAGE(_name, _leaf, _pin)                                                       \
	struct _name##_table_t {                                                                 \
		int key;                                                                         \
		_leaf leaf;                                                                      \
		void *(*sk_storage_get)(void *, void *, int);                                    \
		int (*sk_storage_delete)(void *);                                                \
		__u32 flags;                                                                     \
	};                                                                                       \
	__attribute__((section("maps/sk_storage:" _pin))) struct _name##_table_t _name = {      \
		.flags = BPF_F_NO_PREALLOC};                                                     \
	BPF_ANNOTATE_KV_PAIR(_name, int, _leaf)
MFS_SK_STORAGE(sk_flows, struct mfs_flow_entry, MFS_PIN_DIR "/sk_flows");
MFS_SK_STORAGE(sk_state, struct mfs_flow_state, MFS_PIN_DIR "/sk_state");
#endif

#define ETH_P_8021Q_ 0x8100
#define ETH_P_8021AD_ 0x88A8
#define IP_MF_ 0x2000
#define IP_OFFSET_ 0x1FFF
#define IPV6_MAX_EXT 6
#define TCP_FIN_ 0x01
#define TCP_SYN_ 0x02
#define TCP_RST_ 0x04
#define TCP_ACK_ 0x10
#define U64_MAX_ (~0ULL)
#define S64_MAX_ ((__s64)(U64_MAX_ >> 1))
#define S64_MIN_ (-S64_MAX_ - 1)
/* __sk_buff.tstamp_type of a monotonic delivery time: BPF_SKB_TSTAMP_DELIVERY_MONO (5.18),
 * renamed BPF_SKB_CLOCK_MONOTONIC (6.11), the same value */
#define MFS_TSTAMP_MONO 1

/* Copy `len` header bytes at `off`: straight from the packet when they are in its linear part
 * (the common case, no helper call), else through bpf_skb_load_bytes (paged / GSO skbs). */
static __always_inline int hdr(struct __sk_buff *skb, __u32 off, void *to, const __u32 len)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;

	if (off <= 512 && data + off + len <= data_end) {
		/* word-sized copies (the BPF ISA allows unaligned packet loads where the verifier does
		 * not demand strict alignment: x86-64, arm64); byte copies would be 4x the code */
		__builtin_memcpy(to, __builtin_assume_aligned(data + off, 4), len);
		return 0;
	}
	return bpf_skb_load_bytes(skb, off, to, len);
}

static __always_inline void count(__u32 slot, __u64 bytes)
{
	struct mfs_counter *c = stats.lookup(&slot);
	if (c) {
		c->packets += 1;
		c->bytes += bytes;
	}
}

/* a * b saturated at 2^64-1, from 32-bit halves (no 128-bit multiply in BPF) */
static __always_inline __u64 mul_sat(__u64 a, __u64 b)
{
	if (((a | b) >> 32) == 0)
		return a * b;
	__u64 ah = a >> 32, al = a & 0xffffffffULL, bh = b >> 32, bl = b & 0xffffffffULL;
	if (ah && bh)
		return U64_MAX_;
	__u64 cross = ah * bl + bh * al; /* one term is 0, the other < 2^64 */
	if (cross >> 32)
		return U64_MAX_;
	__u64 lo = al * bl;
	__u64 r = (cross << 32) + lo;
	return r < lo ? U64_MAX_ : r;
}

/* a * ps / 1000 with the product saturated at 2^64-1 (entry.py: mul_ps) */
static __always_inline __u64 mul_ps(__u64 a, __u64 ps)
{
	return mul_sat(a, ps) / 1000;
}

static __always_inline __s64 sat_s64(__u64 v)
{
	return v > (__u64)S64_MAX_ ? S64_MAX_ : (__s64)v;
}

/* The entry's metric (mfs_maps.h). Mirrored exactly by FlowEntry.metric() in mfs_tc/entry.py.
 * now >= 0 (CLOCK_MONOTONIC). */
static __always_inline __s64 flow_metric(struct mfs_flow_entry *e, __s64 now, __u64 sent,
					 __s32 cursor, __u32 *auto_scav)
{
	switch (e->mode) {
	case MFS_MODE_MLU: {
		if (e->deadline_ns <= now) {
			if (e->flags & MFS_F_AUTO_SCAVENGE)
				*auto_scav = 1;
			return MFS_MLU_CAP;
		}
		__u64 t = (__u64)(e->deadline_ns - now); /* > 0, no overflow since now >= 0 */
		__u64 rem = e->total_bytes > sent ? e->total_bytes - sent : 0;
		__u64 need = mul_ps(rem, e->ps_per_byte);
		/* keep t < 2^40 so that need < 64 t fits 16 more bits */
		if (t >= (1ULL << 40)) {
			need >>= 10;
			t >>= 10;
		}
		if (t >= (1ULL << 40)) {
			need >>= 10;
			t >>= 10;
		}
		if (t >= (1ULL << 40)) {
			need >>= 10;
			t >>= 10;
		}
		__s64 m = need >= t * (MFS_MLU_CAP / MFS_MLU_ONE) ? MFS_MLU_CAP
								 : (__s64)((need << 16) / t);
		/* needs more than the whole bottleneck for all the time left: it cannot make it */
		if ((e->flags & MFS_F_AUTO_SCAVENGE) && m > MFS_MLU_ONE)
			*auto_scav = 1;
		return m;
	}
	case MFS_MODE_RLI:
		return (__s64)e->target_layer - (__s64)cursor;
	case MFS_MODE_LAXITY: {
		__s64 a;
		if (e->deadline_ns < (__s64)((__u64)S64_MIN_ + (__u64)now))
			a = S64_MIN_;
		else
			a = e->deadline_ns - now;
		__s64 x = (__s64)mul_ps(sent, e->ps_per_byte); /* < 2^54 */
		return a > S64_MAX_ - x ? S64_MAX_ : a + x;
	}
	case MFS_MODE_SENT:
		return sat_s64(sent);
	case MFS_MODE_REMAINING:
		return e->total_bytes > sent ? sat_s64(e->total_bytes - sent) : 0;
	default:
		return 0;
	}
}

/* CLOCK_MONOTONIC now, for a packet of a flow whose level depends on time. A TCP segment
 * carries it already: TCP stamps every segment it transmits with its departure time (EDT,
 * CLOCK_MONOTONIC ns: the clock TCP read for this transmission, or under pacing the time the
 * segment may leave), marked as a monotonic delivery time (tstamp_type, Linux 5.18+). Reading
 * it saves the clock helper call. Everything else reads the clock: UDP (SO_TXTIME lets a
 * sender choose its stamp) and packets whose stamp is not a monotonic delivery time (one being
 * forwarded from another host carries its arrival time). -DMFS_NO_TSTAMP_TYPE: before 5.18. */
static __always_inline __s64 packet_now(struct __sk_buff *skb, int tcp)
{
#ifndef MFS_NO_TSTAMP_TYPE
	if (tcp && skb->tstamp_type == MFS_TSTAMP_MONO) {
		__u64 ts = skb->tstamp;
		if (ts && ts <= (__u64)S64_MAX_)
			return (__s64)ts;
	}
#endif
	return (__s64)bpf_ktime_get_ns();
}

/* Level of a packet of a known flow; counts its payload into the flow's state. */
static __always_inline __u32 flow_level(struct __sk_buff *skb, int tcp, struct mfs_flow_entry *e,
					struct mfs_flow_state *st, struct mfs_config *cfg,
					__u64 payload, __u32 *scavenged, __u32 *bad)
{
	/* only mlu and laxity depend on time: the others skip the clock */
	__s64 now = (e->mode == MFS_MODE_MLU || e->mode == MFS_MODE_LAXITY) ? packet_now(skb, tcp) : 0;
	__u64 sent = st->sent_bytes;
	__u64 cur = st->cur_level;
	__s32 cursor = 0;
	__u32 scav = 0, level;
	__u32 n = cfg->nlevels;

	if (e->request_id) {
		__u64 rid = e->request_id;
		__u32 rflags = 0;
		/* the request's slot, where the entry names it and it still holds this request: an
		 * array access (inlined), no hash lookup; else its record */
		__u32 es = e->slot;
		struct mfs_cursor *c = es < MFS_CURSORS_MAX ? cursors.lookup(&es) : 0;
		if (c && c->request_key == rid) {
			cursor = c->cursor;
			rflags = c->flags;
		} else {
			count(MFS_STAT_REQ_RECORD, 0);
			struct mfs_request *r = requests.lookup(&rid);
			if (r) {
				__u32 slot = r->slot;
				c = slot < MFS_CURSORS_MAX ? cursors.lookup(&slot) : 0;
				cursor = c ? c->cursor : r->cursor;
				rflags = r->flags;
			}
		}
		if (rflags & MFS_R_SCAVENGER)
			scav = 1;
	}
	__s64 m = flow_metric(e, now, sent, cursor, &scav);
	if (scav) {
		level = cfg->scavenger_level;
		if (level >= n)
			level = n ? n - 1 : 0;
	} else {
		__u32 nt = e->nthresh, i = 0;
#pragma unroll
		for (int j = 0; j < MFS_MAX_THRESH; j++) {
			if (j < nt && m >= e->thresh[j])
				i++;
		}
		level = e->lvl[i & 7];
		if (level >= n) {
			/* not the scavenger by accident: the default level, and counted */
			level = cfg->default_level < n ? cfg->default_level : (n ? n - 1 : 0);
			*bad = 1;
		}
		if (e->flags & MFS_F_MONOTONIC) {
			if (cur < level)
				level = cur;
		}
	}
	if (e->flags & MFS_F_MONOTONIC) {
		/* only ever lower it: a CPU that lost a race retries against the new value */
		if (!scav && level < cur) {
			__u64 old = __sync_val_compare_and_swap(&st->cur_level, cur, (__u64)level);
			if (old != cur && level < old)
				__sync_val_compare_and_swap(&st->cur_level, old, (__u64)level);
		}
	} else if (cur != level) {
		st->cur_level = level;
	}
	__sync_fetch_and_add(&st->sent_bytes, payload);
	st->sent_pkts += 1; /* informational: a rare lost increment across CPUs is acceptable */
	*scavenged = scav;
	return level;
}

/* Restart a state for a new registration (its gen differs from the entry's). The caller first
 * looks the entry up again: a hash element that user space replaced may be recycled for another
 * key while a program still reads it, and a gen read from such an element must not reset
 * anything (the fresh lookup finds the element that really holds this key). */
static __always_inline void state_restart(struct mfs_flow_entry *e, struct mfs_flow_state *st)
{
	st->cur_level = MFS_LEVEL_NONE;
	st->sent_bytes = e->sent_base;
	st->sent_pkts = 0;
	st->flags = 0;
	st->gen = e->gen;
}

/* The registration's state at the slot its entry names, where the slot is its own (owner ==
 * gen; gen 0 is no registration): an array access, inlined. 0: look the state up instead. */
static __always_inline struct mfs_flow_state *slot_state(struct mfs_flow_entry *e)
{
	__u32 s = e->state;
	struct mfs_flow_state *st = s < MFS_STATES_MAX ? states.lookup(&s) : 0;
	return st && e->gen && st->owner == e->gen ? st : 0;
}

/* Rewrite DSCP, keeping ECN. l3off: offset of the IP header; v4: IPv4 (else IPv6). Where the
 * header is in the linear part of the skb it is written in place (direct packet access: no
 * helper calls) with the IPv4 header checksum updated incrementally (RFC 1624: HC' = ~(~HC + ~m
 * + m')); else through the helpers: the byte stored first, then the checksum fixed for it. */
static __always_inline int set_dscp(struct __sk_buff *skb, __u32 l3off, int v4, __u8 b0,
				    __u8 b1, __u8 dscp)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	if (l3off > 22)
		goto slow;
	__u8 *p = data + l3off;
	if (v4) {
		__u8 tos = (dscp << 2) | (b1 & 0x3);
		if (tos == b1)
			return 0;
		if ((void *)(p + 12) > data_end)
			goto slow;
		__u32 hc = ((__u32)p[10] << 8) | p[11];
		__u32 m = ((__u32)b0 << 8) | b1, m2 = ((__u32)b0 << 8) | tos;
		__u32 sum = (~hc & 0xffff) + (~m & 0xffff) + m2;
		sum = (sum & 0xffff) + (sum >> 16);
		sum = (sum & 0xffff) + (sum >> 16);
		hc = ~sum & 0xffff;
		p[1] = tos;
		p[10] = hc >> 8;
		p[11] = hc & 0xff;
		return 1;
	} else {
		__u8 tc = ((b0 & 0x0f) << 4) | (b1 >> 4);
		__u8 ntc = (dscp << 2) | (tc & 0x3);
		if (ntc == tc)
			return 0;
		if ((void *)(p + 2) > data_end)
			goto slow;
		p[0] = (b0 & 0xf0) | (ntc >> 4);
		p[1] = ((ntc & 0x0f) << 4) | (b1 & 0x0f);
		return 1;
	}
slow:
	if (v4) {
		__u8 tos = (dscp << 2) | (b1 & 0x3);
		if (tos == b1)
			return 0;
		__u16 oldw = bpf_htons(((__u16)b0 << 8) | b1);
		__u16 neww = bpf_htons(((__u16)b0 << 8) | tos);
		if (bpf_skb_store_bytes(skb, l3off + 1, &tos, 1, 0))
			return -1;
		if (bpf_l3_csum_replace(skb, l3off + offsetof(struct iphdr, check), oldw, neww, 2)) {
			bpf_skb_store_bytes(skb, l3off + 1, &b1, 1, 0); /* leave it as it was */
			return -1;
		}
		return 1;
	}
	__u8 tc = ((b0 & 0x0f) << 4) | (b1 >> 4);
	__u8 ntc = (dscp << 2) | (tc & 0x3);
	if (ntc == tc)
		return 0;
	__u8 w[2];
	w[0] = (b0 & 0xf0) | (ntc >> 4);
	w[1] = ((ntc & 0x0f) << 4) | (b1 & 0x0f);
	return bpf_skb_store_bytes(skb, l3off, w, 2, BPF_F_RECOMPUTE_CSUM) ? -1 : 1;
}

/* The first rule (in table order) that matches the packet: its level in *level, counted in
 * rule_stats. 0 when none does. A bounded scan of at most MFS_RULES_MAX array slots (each an
 * inlined array lookup and a few compares), ending at the first empty slot: the cost is paid
 * only on the exact-entry miss path and grows with the rules installed, not the table size. */
static __always_inline int rule_level(struct mfs_flow_key *key, int v4, __u32 *level, __u32 len)
{
	__u64 s0, s1, d0, d1;
	__builtin_memcpy(&s0, &key->saddr[0], 8);
	__builtin_memcpy(&s1, &key->saddr[8], 8);
	__builtin_memcpy(&d0, &key->daddr[0], 8);
	__builtin_memcpy(&d1, &key->daddr[8], 8);
	__u8 fam = v4 ? 4 : 6;
#pragma clang loop unroll(disable)
	for (__u32 i = 0; i < MFS_RULES_MAX; i++) {
		__u32 slot = i;
		struct mfs_rule *r = rules.lookup(&slot);
		if (!r || !r->id)
			return 0;
		if ((r->family && r->family != fam) || (r->proto && r->proto != key->proto))
			continue;
		if (((s0 & r->smask[0]) != r->src[0]) || ((s1 & r->smask[1]) != r->src[1]) ||
		    ((d0 & r->dmask[0]) != r->dst[0]) || ((d1 & r->dmask[1]) != r->dst[1]))
			continue;
		if (key->sport < r->sport_lo || key->sport > r->sport_hi || key->dport < r->dport_lo ||
		    key->dport > r->dport_hi)
			continue;
		__u32 cs = r->cslot;
		struct mfs_counter *c = rule_stats.lookup(&cs);
		if (c) {
			c->packets += 1;
			c->bytes += len;
		}
		*level = r->level;
		return 1;
	}
	return 0;
}

static __always_inline __u32 cfg_level(__u32 lv, struct mfs_config *cfg)
{
	__u32 n = cfg->nlevels;
	return lv < n ? lv : (n ? n - 1 : 0);
}

int mfs_egress(struct __sk_buff *skb)
{
	__u32 zero = 0;
	struct mfs_config *cfg = config.lookup(&zero);
	if (!cfg || cfg->magic != MFS_LAYOUT_MAGIC)
		return TC_ACT_OK;

	__u32 level = cfg_level(cfg->default_level, cfg);
	__u32 reason = MFS_STAT_NONIP; /* why the default level, when it is */
	__u32 scav = 0, bad = 0;
	int v4 = 0, known = 0, ipok = 0; /* ipok: a valid IP header whose DSCP may be set */
	__u8 b0 = 0, b1 = 0;
	__u32 off = ETH_HLEN, l3off = ETH_HLEN;
	__u32 iplen = 0; /* L3 payload length from the IP header (0: unknown, use skb->len) */
	__be16 proto;

	if (hdr(skb, 12, &proto, 2)) {
		reason = MFS_STAT_MALFORMED;
		goto out;
	}
#pragma unroll
	for (int t = 0; t < 2; t++) { /* 802.1Q, or 802.1ad + 802.1Q (QinQ) */
		if (proto != bpf_htons(ETH_P_8021Q_) && proto != bpf_htons(ETH_P_8021AD_))
			break;
		if (hdr(skb, off + 2, &proto, 2)) {
			reason = MFS_STAT_MALFORMED;
			goto out;
		}
		off += 4;
	}
	l3off = off;

	/* the 5-tuple key is only built when the socket has no entry: IPv6 addresses go into it
	 * here (they are copied anyway), IPv4 addresses and the ports wait in registers */
	struct mfs_flow_key key;
	__u32 sa4 = 0, da4 = 0;
	__be16 sport = 0, dport = 0;
	__u8 l4proto;
	if (proto == bpf_htons(ETH_P_IP)) {
		struct iphdr ip;
		if (hdr(skb, off, &ip, sizeof(ip))) {
			reason = MFS_STAT_MALFORMED;
			goto out;
		}
		__u32 ihl = ip.ihl * 4;
		__u32 tot = bpf_ntohs(ip.tot_len);
		/* tot_len 0: IPv4 BIG TCP (a GSO packet over 64 kB); its length is skb->len */
		if (ip.version != 4 || ihl < sizeof(ip) || (tot && tot < ihl)) {
			reason = MFS_STAT_MALFORMED;
			goto out;
		}
		v4 = 1;
		ipok = 1;
		b0 = *(__u8 *)&ip;
		b1 = ip.tos;
		if (cfg->flags & MFS_C_TRUST_DSCP)
			goto trust;
		if (ip.frag_off & bpf_htons(IP_MF_ | IP_OFFSET_)) {
			/* every fragment of a datagram at the default level: no reordering among them */
			reason = MFS_STAT_FRAGMENT;
			goto out;
		}
		sa4 = ip.saddr;
		da4 = ip.daddr;
		l4proto = ip.protocol;
		iplen = tot ? tot : 0;
		off += ihl;
		if (iplen)
			iplen = l3off + iplen; /* end of the IP packet */
	} else if (proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr ip6;
		if (hdr(skb, off, &ip6, sizeof(ip6))) {
			reason = MFS_STAT_MALFORMED;
			goto out;
		}
		if (ip6.version != 6) {
			reason = MFS_STAT_MALFORMED;
			goto out;
		}
		ipok = 1;
		b0 = ((__u8 *)&ip6)[0];
		b1 = ((__u8 *)&ip6)[1];
		if (cfg->flags & MFS_C_TRUST_DSCP)
			goto trust;
		__builtin_memcpy(key.saddr, &ip6.saddr, 16);
		__builtin_memcpy(key.daddr, &ip6.daddr, 16);
		l4proto = ip6.nexthdr;
		off += sizeof(ip6);
		__u32 pl = bpf_ntohs(ip6.payload_len);
		iplen = pl ? off + pl : 0;
#pragma unroll
		for (int i = 0; i < IPV6_MAX_EXT; i++) {
			if (l4proto != IPPROTO_HOPOPTS && l4proto != IPPROTO_ROUTING &&
			    l4proto != IPPROTO_DSTOPTS && l4proto != IPPROTO_AH &&
			    l4proto != IPPROTO_FRAGMENT)
				break;
			if (l4proto == IPPROTO_FRAGMENT) {
				reason = MFS_STAT_FRAGMENT;
				goto out;
			}
			__u8 ext[2];
			if (hdr(skb, off, ext, 2)) {
				reason = MFS_STAT_MALFORMED;
				goto out;
			}
			/* AH counts its length in 4-byte units minus 2, the others in 8-byte units minus 1 */
			__u32 hl = l4proto == IPPROTO_AH ? ((__u32)ext[1] + 2) * 4 : ((__u32)ext[1] + 1) * 8;
			l4proto = ext[0];
			off += hl;
		}
	} else {
		reason = MFS_STAT_NONIP;
		goto out;
	}

	__u32 l4len;
	__u8 tflags = 0;
	if (l4proto == IPPROTO_TCP) {
		struct tcphdr th;
		if (hdr(skb, off, &th, sizeof(th))) {
			reason = MFS_STAT_MALFORMED;
			goto out;
		}
		l4len = th.doff * 4;
		if (l4len < sizeof(th)) {
			reason = MFS_STAT_MALFORMED;
			goto out;
		}
		sport = th.source;
		dport = th.dest;
		tflags = ((__u8 *)&th)[13];
	} else if (l4proto == IPPROTO_UDP) {
		struct udphdr uh;
		if (hdr(skb, off, &uh, sizeof(uh))) {
			reason = MFS_STAT_MALFORMED;
			goto out;
		}
		l4len = sizeof(uh);
		sport = uh.source;
		dport = uh.dest;
	} else {
		reason = MFS_STAT_NOL4;
		goto out;
	}

	/* L4 payload: up to the IP header's own length (Ethernet padding is not payload) */
	__u32 end = skb->len;
	if (iplen && iplen < end)
		end = iplen;
	__u32 hdrs = off + l4len;
	__u64 payload = end > hdrs ? end - hdrs : 0;

	struct mfs_flow_entry *e;
	struct mfs_flow_state *st;
#ifndef MFS_NO_SK_STORAGE
	/* skb->sk straight to the storage helper: it returns NULL for sockets that are not full
	 * ones (request and timewait sockets) itself, so no bpf_sk_fullsock call per packet */
	struct bpf_sock *sk = skb->sk;
	if (sk) {
		e = sk_flows.sk_storage_get(sk, 0, 0);
		if (e) {
			st = slot_state(e);
			if (st) {
				/* the slot is this registration's (owner == gen): a gen of its own
				 * that differs is the slot's first packet since the claim */
				if (st->gen != e->gen)
					state_restart(e, st);
			} else {
				/* no slot: the state in the socket's storage, created from the entry once */
				count(MFS_STAT_STATE_LOOKUP, 0);
				st = sk_state.sk_storage_get(sk, 0, 0);
				if (!st) {
					struct mfs_flow_state init = {.gen = e->gen,
								      .cur_level = MFS_LEVEL_NONE,
								      .sent_bytes = e->sent_base};
					st = sk_state.sk_storage_get(sk, &init, BPF_SK_STORAGE_GET_F_CREATE);
				}
				if (st && st->gen != e->gen) {
					e = sk_flows.sk_storage_get(sk, 0, 0);
					if (e && st->gen != e->gen)
						state_restart(e, st);
				}
			}
			if (st && e) {
				level = flow_level(skb, l4proto == IPPROTO_TCP, e, st, cfg, payload, &scav, &bad);
				known = 1;
				reason = scav ? MFS_STAT_SCAVENGED : MFS_STAT_SK_HIT;
				goto out;
			}
		}
	}
#endif
	if (v4) {
		/* IPv4-mapped IPv6: ::ffff:a.b.c.d */
		__builtin_memset(&key, 0, 32);
		key.saddr[10] = 0xff;
		key.saddr[11] = 0xff;
		key.daddr[10] = 0xff;
		key.daddr[11] = 0xff;
		__builtin_memcpy(&key.saddr[12], &sa4, 4);
		__builtin_memcpy(&key.daddr[12], &da4, 4);
	}
	key.sport = bpf_ntohs(sport);
	key.dport = bpf_ntohs(dport);
	key.proto = l4proto;
	key.pad[0] = 0;
	key.pad[1] = 0;
	key.pad[2] = 0;
	e = flows.lookup(&key);
	st = 0; /* the miss path does one lookup */
	int slotted = 0;
	if (e) {
		st = slot_state(e);
		if (st) {
			slotted = 1;
		} else {
			count(MFS_STAT_STATE_LOOKUP, 0);
			st = flow_state.lookup(&key);
		}
	}
	if (e && e->request_id) {
		if (st && st->gen == e->gen && (st->flags & MFS_S_ACKED) &&
		    (tflags & (TCP_SYN_ | TCP_ACK_)) == TCP_SYN_) {
			/* a new connection on the 5-tuple of one that already ran: it must not
			 * inherit that flow's request. (An operator's static entry, request 0,
			 * names the 5-tuple, not one connection: it stays.) */
			flows.delete(&key);
			count(MFS_STAT_STALE, 0);
			e = 0;
		}
	}
	if (e) {
		if (!st) {
			struct mfs_flow_state init = {.gen = e->gen,
						      .cur_level = MFS_LEVEL_NONE,
						      .sent_bytes = e->sent_base};
			flow_state.insert(&key, &init);
			st = flow_state.lookup(&key);
		}
		if (st && st->gen != e->gen) {
			/* a slot owned by this gen is this registration's; a looked-up state may be
			 * read against a replaced element: look the entry up again first */
			if (!slotted)
				e = flows.lookup(&key);
			if (e && st->gen != e->gen)
				state_restart(e, st);
		}
		if (st && e) {
			if ((tflags & TCP_ACK_) && !(st->flags & MFS_S_ACKED))
				st->flags |= MFS_S_ACKED;
			level = flow_level(skb, l4proto == IPPROTO_TCP, e, st, cfg, payload, &scav, &bad);
			known = 1;
			reason = scav ? MFS_STAT_SCAVENGED : MFS_STAT_HIT;
			goto out;
		}
	}
	/* no exact entry: the operator's rules, before the default */
	if (rule_level(&key, v4, &level, skb->len)) {
		if (st && !e)
			count(MFS_STAT_ORPHAN, skb->len);
		level = cfg_level(level, cfg);
		known = 1;
		reason = MFS_STAT_RULE;
		goto out;
	}
	/* unknown flow: never the top because its entry is missing */
	if ((tflags & (TCP_SYN_ | TCP_FIN_ | TCP_RST_)) || (l4proto == IPPROTO_TCP && !payload)) {
		level = cfg_level(cfg->control_level, cfg);
		reason = MFS_STAT_CONTROL;
	} else {
		reason = MFS_STAT_MISS;
	}
	goto out;

trust:
	/* IPv4: DSCP is the top 6 bits of the TOS byte; IPv6: of the traffic class (bits 4-11) */
	level = cfg->dscp2level[(v4 ? b1 : (((b0 & 0x0f) << 4) | (b1 >> 4))) >> 2 & 63];
	level = cfg_level(level, cfg);
	reason = MFS_STAT_HIT;

out:
	level &= MFS_MAX_LEVELS - 1;
	struct mfs_level *lv = levels.lookup(&level);
	if (lv) {
		skb->priority = lv->priority;
		/* flows we track, and untracked IP traffic (the trust boundary: it leaves with the
		 * DSCP of its level unless the operator keeps its DSCP); never malformed packets,
		 * never on a trust-dscp port (its DSCP is the input) */
		if (lv->dscp != MFS_DSCP_KEEP && ipok && !(cfg->flags & MFS_C_TRUST_DSCP) &&
		    reason != MFS_STAT_MALFORMED) {
			__u8 cur = (v4 ? b1 : (((b0 & 0x0f) << 4) | (b1 >> 4))) >> 2;
			if (known || !((cfg->keep_dscp >> (cur & 63)) & 1)) {
				if (set_dscp(skb, l3off, v4, b0, b1, lv->dscp & 63) > 0)
					count(MFS_STAT_DSCP_SET, 0);
			}
		}
	}
	if (bad)
		count(MFS_STAT_BAD_LEVEL, 0);
	count(MFS_STAT_LEVEL0 + level, skb->len);
	count(reason, skb->len);
	return TC_ACT_OK;
}
