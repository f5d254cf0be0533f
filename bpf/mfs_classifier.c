// SPDX-License-Identifier: GPL-2.0
/*
 * mfs-tc egress classifier (tc clsact egress, direct action), compiled by bcc at attach.
 *
 * Per packet: parse Ethernet (+ one 802.1Q/802.1ad tag), IPv4 (options) or IPv6 (extension
 * headers), TCP or UDP; look the 5-tuple up in `flows`; evaluate the entry's threshold table
 * (see mfs_maps.h) at bpf_ktime_get_ns(); write skb->priority from `levels` and, when the level
 * has one, the DSCP (ECN bits kept, IPv4 header checksum fixed); count bytes per flow and per
 * level. In trust-dscp mode (switch ports) the level comes from the packet's DSCP instead.
 *
 * It never drops: unknown flows, non-IP, fragments, truncated or malformed headers go to the
 * default level with the packet untouched, and are counted. Headers are read straight from the
 * linear part of the packet, or with bpf_skb_load_bytes where they are not (paged skbs).
 *
 * The loader substitutes MFS_PIN_DIR (the pin directory of this interface) before compiling.
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

BPF_TABLE_PINNED("lru_hash", struct mfs_flow_key, struct mfs_flow_entry, flows, MFS_FLOWS_MAX,
		 MFS_PIN_DIR "/flows");
BPF_TABLE_PINNED("hash", __u64, struct mfs_request, requests, MFS_REQUESTS_MAX,
		 MFS_PIN_DIR "/requests");
BPF_TABLE_PINNED("array", __u32, struct mfs_level, levels, MFS_MAX_LEVELS, MFS_PIN_DIR "/levels");
BPF_TABLE_PINNED("array", __u32, struct mfs_config, config, 1, MFS_PIN_DIR "/config");
BPF_TABLE_PINNED("percpu_array", __u32, struct mfs_counter, stats, MFS_NSTATS,
		 MFS_PIN_DIR "/stats");

#define ETH_P_8021Q_ 0x8100
#define ETH_P_8021AD_ 0x88A8
#define IP_MF_ 0x2000
#define IP_OFFSET_ 0x1FFF
#define IPV6_MAX_EXT 6

/* Copy `len` header bytes at `off`: straight from the packet when they are in its linear part
 * (the common case, no helper call), else through bpf_skb_load_bytes (paged / GSO skbs). */
static __always_inline int hdr(struct __sk_buff *skb, __u32 off, void *to, const __u32 len)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;

	if (off <= 512 && data + off + len <= data_end) {
		__builtin_memcpy(to, data + off, len);
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

/* The entry's metric (mfs_maps.h). Mirrored exactly by FlowEntry.metric() in mfs_tc/entry.py. */
static __always_inline __s64 flow_metric(struct mfs_flow_entry *e, __s64 now, __u64 sent,
					 __s32 cursor, __u32 *auto_scav)
{
	switch (e->mode) {
	case MFS_MODE_MLU: {
		__s64 tl = e->deadline_ns - now;
		if (tl <= 0) {
			if (e->flags & MFS_F_AUTO_SCAVENGE)
				*auto_scav = 1;
			return MFS_MLU_CAP;
		}
		__u64 rem = e->total_bytes > sent ? e->total_bytes - sent : 0;
		__u64 need = rem * e->ps_per_byte / 1000;
		__u64 t = (__u64)tl;
		if (t >= (1ULL << 40)) {
			need >>= 10;
			t >>= 10;
		}
		if (need >= t * (MFS_MLU_CAP / MFS_MLU_ONE))
			return MFS_MLU_CAP;
		return (__s64)((need << 16) / t);
	}
	case MFS_MODE_RLI:
		return (__s64)e->target_layer - (__s64)cursor;
	case MFS_MODE_LAXITY:
		return e->deadline_ns + (__s64)(sent * e->ps_per_byte / 1000) - now;
	case MFS_MODE_SENT:
		return (__s64)sent;
	case MFS_MODE_REMAINING:
		return e->total_bytes > sent ? (__s64)(e->total_bytes - sent) : 0;
	default:
		return 0;
	}
}

/* Level of a packet of a known flow; counts its payload into the entry. */
static __always_inline __u32 flow_level(struct mfs_flow_entry *e, struct mfs_config *cfg,
					__u64 payload, __u32 *scavenged)
{
	/* only mlu and laxity depend on time: the others skip the clock read */
	__s64 now = (e->mode == MFS_MODE_MLU || e->mode == MFS_MODE_LAXITY) ? (__s64)bpf_ktime_get_ns() : 0;
	__u64 sent = e->sent_bytes;
	__s32 cursor = 0;
	__u32 scav = 0, level;

	if (e->request_id) {
		__u64 rid = e->request_id;
		struct mfs_request *r = requests.lookup(&rid);
		if (r) {
			cursor = r->cursor;
			if (r->flags & MFS_R_SCAVENGER)
				scav = 1;
		}
	}
	__s64 m = flow_metric(e, now, sent, cursor, &scav);
	if (scav) {
		level = cfg->scavenger_level;
	} else {
		__u32 n = e->nthresh, i = 0;
#pragma unroll
		for (int j = 0; j < MFS_MAX_THRESH; j++) {
			if (j < n && m >= e->thresh[j])
				i++;
		}
		level = e->lvl[i & 7];
	}
	if (level >= cfg->nlevels)
		level = cfg->nlevels ? cfg->nlevels - 1 : 0;
	if (!scav && (e->flags & MFS_F_MONOTONIC) && e->cur_level < level)
		level = e->cur_level;
	if (e->cur_level != level)
		e->cur_level = level;
	__sync_fetch_and_add(&e->sent_bytes, payload);
	e->sent_pkts += 1; /* informational: a rare lost increment across CPUs is acceptable */
	*scavenged = scav;
	return level;
}

/* Rewrite DSCP, keeping ECN. l3off: offset of the IP header; v4: IPv4 (else IPv6). */
static __always_inline int set_dscp(struct __sk_buff *skb, __u32 l3off, int v4, __u8 b0,
				    __u8 b1, __u8 dscp)
{
	if (v4) {
		__u8 tos = (dscp << 2) | (b1 & 0x3);
		if (tos == b1)
			return 0;
		__u16 oldw = bpf_htons(((__u16)b0 << 8) | b1);
		__u16 neww = bpf_htons(((__u16)b0 << 8) | tos);
		if (bpf_l3_csum_replace(skb, l3off + offsetof(struct iphdr, check), oldw, neww, 2))
			return -1;
		return bpf_skb_store_bytes(skb, l3off + 1, &tos, 1, 0) ? -1 : 1;
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

int mfs_egress(struct __sk_buff *skb)
{
	__u32 zero = 0;
	struct mfs_config *cfg = config.lookup(&zero);
	if (!cfg || cfg->magic != MFS_LAYOUT_MAGIC)
		return TC_ACT_OK;

	__u32 level = cfg->default_level;
	__u32 reason = MFS_STAT_NONIP; /* why the default level, when it is */
	__u32 scav = 0;
	int v4 = 0, known = 0;
	__u8 b0 = 0, b1 = 0;
	__u32 off = ETH_HLEN, l3off = ETH_HLEN;
	__be16 proto;

	if (hdr(skb, 12, &proto, 2)) {
		reason = MFS_STAT_MALFORMED;
		goto out;
	}
	if (proto == bpf_htons(ETH_P_8021Q_) || proto == bpf_htons(ETH_P_8021AD_)) {
		if (hdr(skb, off + 2, &proto, 2)) {
			reason = MFS_STAT_MALFORMED;
			goto out;
		}
		off += 4;
	}
	l3off = off;

	struct mfs_flow_key key = {};
	__u8 l4proto;
	if (proto == bpf_htons(ETH_P_IP)) {
		struct iphdr ip;
		if (hdr(skb, off, &ip, sizeof(ip))) {
			reason = MFS_STAT_MALFORMED;
			goto out;
		}
		__u32 ihl = ip.ihl * 4;
		if (ip.version != 4 || ihl < sizeof(ip) || bpf_ntohs(ip.tot_len) < ihl) {
			reason = MFS_STAT_MALFORMED;
			goto out;
		}
		v4 = 1;
		b0 = *(__u8 *)&ip;
		b1 = ip.tos;
		if (cfg->flags & MFS_C_TRUST_DSCP)
			goto trust;
		if (ip.frag_off & bpf_htons(IP_MF_ | IP_OFFSET_)) {
			reason = MFS_STAT_FRAGMENT;
			goto out;
		}
		key.saddr[10] = 0xff;
		key.saddr[11] = 0xff;
		key.daddr[10] = 0xff;
		key.daddr[11] = 0xff;
		__builtin_memcpy(&key.saddr[12], &ip.saddr, 4);
		__builtin_memcpy(&key.daddr[12], &ip.daddr, 4);
		l4proto = ip.protocol;
		off += ihl;
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
		b0 = ((__u8 *)&ip6)[0];
		b1 = ((__u8 *)&ip6)[1];
		if (cfg->flags & MFS_C_TRUST_DSCP)
			goto trust;
		__builtin_memcpy(key.saddr, &ip6.saddr, 16);
		__builtin_memcpy(key.daddr, &ip6.daddr, 16);
		l4proto = ip6.nexthdr;
		off += sizeof(ip6);
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
		key.sport = bpf_ntohs(th.source);
		key.dport = bpf_ntohs(th.dest);
	} else if (l4proto == IPPROTO_UDP) {
		struct udphdr uh;
		if (hdr(skb, off, &uh, sizeof(uh))) {
			reason = MFS_STAT_MALFORMED;
			goto out;
		}
		l4len = sizeof(uh);
		key.sport = bpf_ntohs(uh.source);
		key.dport = bpf_ntohs(uh.dest);
	} else {
		reason = MFS_STAT_NOL4;
		goto out;
	}
	key.proto = l4proto;

	struct mfs_flow_entry *e = flows.lookup(&key);
	if (!e) {
		reason = MFS_STAT_MISS;
		goto out;
	}
	__u32 hdrs = off + l4len;
	__u64 payload = skb->len > hdrs ? skb->len - hdrs : 0;
	level = flow_level(e, cfg, payload, &scav);
	known = 1;
	reason = scav ? MFS_STAT_SCAVENGED : MFS_STAT_HIT;
	goto out;

trust:
	/* IPv4: DSCP is the top 6 bits of the TOS byte; IPv6: of the traffic class (bits 4-11) */
	level = cfg->dscp2level[(v4 ? b1 : (((b0 & 0x0f) << 4) | (b1 >> 4))) >> 2 & 63];
	reason = MFS_STAT_HIT;

out:
	level &= MFS_MAX_LEVELS - 1;
	struct mfs_level *lv = levels.lookup(&level);
	if (lv) {
		skb->priority = lv->priority;
		if (known && lv->dscp != MFS_DSCP_KEEP) {
			if (set_dscp(skb, l3off, v4, b0, b1, lv->dscp & 63) > 0)
				count(MFS_STAT_DSCP_SET, 0);
		}
	}
	count(MFS_STAT_LEVEL0 + level, skb->len);
	count(reason, skb->len);
	return TC_ACT_OK;
}
