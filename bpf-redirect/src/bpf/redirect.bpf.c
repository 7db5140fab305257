// SPDX-License-Identifier: Apache-2.0
//
// podfence XDP redirector.
//
// Runs on every interface whose traffic the podfence datapath switches (the
// host side of each pod veth, the host port). Its only job is to decide, per
// frame, between three destinations:
//
//   * the kernel (XDP_PASS): ARP and IPv6 neighbour discovery, so that the
//     kernel keeps resolving neighbours on the interface, and any ethertype
//     the datapath does not handle;
//   * the AF_XDP socket bound to the frame's receive queue
//     (bpf_redirect_map on the XSKMAP): every IPv4 and IPv6 frame;
//   * the configured fallback action, when no socket is bound to that queue
//     (the agent is not running or has not bound that queue yet). XDP_DROP by
//     default so that a dead agent fails closed; XDP_PASS fails open.
//
// One loaded program serves many interfaces (every pod veth of a node): the
// kernel's XDP dispatcher is rebuilt, behind an RCU grace period, only when
// a new program is attached somewhere, so a pod that gets the program
// already attached elsewhere starts without that wait. Each interface has a
// slot (the `slots` map, by ifindex): its sockets sit at
// slot * max_queues + queue in the XSKMAP, and its counters in its row of
// the counters array. An interface without a slot is treated as one without
// sockets.
//
// Every outcome is counted in a per-CPU array; userspace sums over CPUs.
// Policy is never decided here: that is the datapath's job. Frames may span
// several buffers (jumbo MTUs); only the headers in the first are read.

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ipv6.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

// 802.1Q / 802.1ad tag following the MAC addresses (linux/if_vlan.h keeps
// this struct kernel-internal, so it is spelled out here).
struct vlan_hdr {
	__be16 h_vlan_TCI;
	__be16 h_vlan_encapsulated_proto;
};

// Frames with more VLAN tags than this are treated as malformed.
#define MAX_VLAN_TAGS 2

#define IPPROTO_ICMPV6_ 58
// ICMPv6 types handled by the kernel's neighbour discovery (RFC 4861):
// router solicitation (133) .. redirect (137), which includes neighbour
// solicitation (135) and advertisement (136).
#define ICMPV6_ND_FIRST 133
#define ICMPV6_ND_LAST 137

// Counter indices. Must match `counters::Counter` in the Rust loader, which
// checks the map size against its own count at load time.
enum counter {
	CNT_REDIRECTED = 0,     // handed to an AF_XDP socket
	CNT_PASSED_NEIGHBOUR,   // ARP / ICMPv6 ND passed to the kernel
	CNT_PASSED_OTHER,       // other ethertypes passed to the kernel
	CNT_FALLBACK_DROPPED,   // IP frame, no socket on the queue, dropped
	CNT_FALLBACK_PASSED,    // IP frame, no socket on the queue, passed
	CNT_MALFORMED,          // truncated L2 header or too many VLAN tags, dropped
	CNT_MAX,
};

// Action when no AF_XDP socket is bound to the receive queue: XDP_DROP or
// XDP_PASS. Set by the loader in .rodata before the program is loaded, so the
// verifier sees a constant.
const volatile __u32 no_socket_action = XDP_DROP;

// Queues per interface (the XSKMAP stride) and interface slots, set by the
// loader in .rodata.
const volatile __u32 max_queues = 64;
const volatile __u32 max_slots = 1;

// Interface slots by ifindex. max_entries is set by the loader (max_slots).
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} slots SEC(".maps");

// AF_XDP sockets keyed by slot * max_queues + receive queue. max_entries is
// set by the loader (max_slots * max_queues) before load.
struct {
	__uint(type, BPF_MAP_TYPE_XSKMAP);
	__uint(max_entries, 64);
	__type(key, __u32);
	__type(value, __u32);
} xsks SEC(".maps");

// One u64 per counter per slot per CPU: no atomics needed on the hot path.
// Row max_slots counts frames of interfaces without a slot. max_entries is
// set by the loader ((max_slots + 1) * CNT_MAX).
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, CNT_MAX);
	__type(key, __u32);
	__type(value, __u64);
} counters SEC(".maps");

static __always_inline int count_at(__u32 row, __u32 counter, int action)
{
	__u32 idx = row * CNT_MAX + counter;
	__u64 *value = bpf_map_lookup_elem(&counters, &idx);

	// The lookup cannot fail for a row <= max_slots, but the verifier insists.
	if (value)
		*value += 1;
	return action;
}

// xdp.frags (BPF_F_XDP_HAS_FRAGS): the program accepts multi-buffer frames,
// which is what lets it attach natively to a veth whose peer MTU exceeds one
// page (the kernel refuses a program without it there: ERANGE, "Peer MTU is
// too large to set XDP"). It reads only the linear part (data..data_end),
// where the Ethernet, VLAN and IP headers always are; the whole frame, every
// buffer of it, is handed to the socket (AF_XDP multi-buffer, XDP_USE_SG).
SEC("xdp.frags")
int podfence_xdp(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	__u32 ifindex = ctx->ingress_ifindex;
	__u32 *slot = bpf_map_lookup_elem(&slots, &ifindex);
	__u32 row = slot ? *slot : max_slots;
	void *cursor;
	__be16 proto;
	int action;

	if ((void *)(eth + 1) > data_end)
		return count_at(row, CNT_MALFORMED, XDP_DROP);
	proto = eth->h_proto;
	cursor = eth + 1;

	// Skip up to two VLAN tags (802.1Q, or QinQ with an 802.1ad outer tag).
#pragma unroll
	for (int i = 0; i < MAX_VLAN_TAGS; i++) {
		struct vlan_hdr *vlan = cursor;

		if (proto != bpf_htons(ETH_P_8021Q) && proto != bpf_htons(ETH_P_8021AD))
			break;
		if ((void *)(vlan + 1) > data_end)
			return count_at(row, CNT_MALFORMED, XDP_DROP);
		proto = vlan->h_vlan_encapsulated_proto;
		cursor = vlan + 1;
	}
	// A third tag: nothing legitimate on a pod interface; do not let it
	// bypass the datapath through the kernel.
	if (proto == bpf_htons(ETH_P_8021Q) || proto == bpf_htons(ETH_P_8021AD))
		return count_at(row, CNT_MALFORMED, XDP_DROP);

	if (proto == bpf_htons(ETH_P_ARP))
		return count_at(row, CNT_PASSED_NEIGHBOUR, XDP_PASS);

	if (proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = cursor;

		// Neighbour discovery directly after the fixed header. ND behind
		// extension headers, or a truncated packet, goes to the datapath,
		// which parses and judges it like any other IPv6 packet.
		if ((void *)(ip6 + 1) <= data_end && ip6->nexthdr == IPPROTO_ICMPV6_) {
			__u8 *icmp_type = (void *)(ip6 + 1);

			if ((void *)(icmp_type + 1) <= data_end &&
			    *icmp_type >= ICMPV6_ND_FIRST && *icmp_type <= ICMPV6_ND_LAST)
				return count_at(row, CNT_PASSED_NEIGHBOUR, XDP_PASS);
		}
	} else if (proto != bpf_htons(ETH_P_IP)) {
		return count_at(row, CNT_PASSED_OTHER, XDP_PASS);
	}

	// IPv4 or IPv6: to the socket on this queue. The low bits of the flags
	// are the action returned when the key has no socket (kernel >= 5.3);
	// success returns XDP_REDIRECT.
	// Without a slot, or from a queue beyond the slot's range, there is no
	// socket.
	if (!slot || ctx->rx_queue_index >= max_queues)
		action = no_socket_action;
	else
		action = bpf_redirect_map(&xsks, *slot * max_queues + ctx->rx_queue_index,
					  no_socket_action);
	if (action == XDP_REDIRECT)
		return count_at(row, CNT_REDIRECTED, action);
	if (action == XDP_PASS)
		return count_at(row, CNT_FALLBACK_PASSED, action);
	return count_at(row, CNT_FALLBACK_DROPPED, action);
}

// Only non-GPL helpers are used, so the project's licence is declared as is.
char LICENSE[] SEC("license") = "Apache-2.0";
