#!/usr/bin/env bash
# ringnet.sh: a testbed whose hosts are joined in a ring of point-to-point
# links, each direction of each link with its own rate budget.
#
#   ringnet.sh up N [--rate 1gbit]
#   ringnet.sh down
#
# netns.sh's star (one shaped link per host to a bridge) gives each host one
# budget up and one down, which a one-way ring already fills; it cannot show
# what a bidirectional ring gains. Here host i (namespace ${PREFIX}i, address
# ${NET}.0.(i+1) on its loopback) has a veth to host i+1 and one to host
# i-1, each end's egress shaped with tbf. Hosts further away are reached by
# forwarding along the ring (only control traffic, e.g. the rendezvous, goes
# that way). Run ranks in ring order: host i runs rank i.
#
# Environment:
#   RINGO_RINGNET_PREFIX  namespace prefix (default "ringo-rh"), at most 10 characters
#   RINGO_RINGNET_NET     first two octets of the addresses (default 10.76)
set -euo pipefail

PREFIX=${RINGO_RINGNET_PREFIX:-ringo-rh}
NET=${RINGO_RINGNET_NET:-10.76}

NAME=ringnet.sh
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"

usage() {
	sed -n '5,6p' "$0" | sed 's/^# \{0,1\}//' >&2
	exit 2
}

check_env() {
	need_root_and_tools
	check_prefix RINGO_RINGNET_PREFIX "$PREFIX" 10
	[[ $NET =~ ^[0-9]+\.[0-9]+$ ]] || die "RINGO_RINGNET_NET=$NET is not two octets"
}

hosts() { hosts_named "$PREFIX"; }

cmd_down() {
	local i
	for i in $(hosts); do
		ip netns del "$PREFIX$i" # takes its veth ends with it
	done
}

cmd_up() {
	[ $# -ge 1 ] || usage
	local n=$1 rate=1gbit
	shift
	[[ $n =~ ^[0-9]+$ ]] && [ "$n" -ge 3 ] && [ "$n" -le 60 ] || die "N=$n: want 3..60 hosts (a ring of 2 is one link)"
	while [ $# -gt 0 ]; do
		case $1 in
		--rate) rate=${2:?--rate needs a value (e.g. 1gbit)}; shift 2 ;;
		--rate=*) rate=${1#*=}; shift ;;
		*) die "up: unknown option $1" ;;
		esac
	done
	cmd_down
	local i j k
	for ((i = 0; i < n; i++)); do
		ip netns add "$PREFIX$i"
		ip -n "$PREFIX$i" link set lo up
		ip -n "$PREFIX$i" addr add "$NET.0.$((i + 1))/32" dev lo
		ip netns exec "$PREFIX$i" sysctl -qw net.ipv4.ip_forward=1 net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.default.rp_filter=0
	done
	# Link i joins host i (address .1) and host i+1 (address .2) in the /30
	# $NET.(10+i).0.
	for ((i = 0; i < n; i++)); do
		j=$(((i + 1) % n))
		ip link add "${PREFIX}x$i" type veth peer name "${PREFIX}y$i"
		ip link set "${PREFIX}x$i" netns "$PREFIX$i" name "to$j"
		ip link set "${PREFIX}y$i" netns "$PREFIX$j" name "to$i"
		ip -n "$PREFIX$i" addr add "$NET.$((10 + i)).1/30" dev "to$j"
		ip -n "$PREFIX$j" addr add "$NET.$((10 + i)).2/30" dev "to$i"
		local end
		for end in "$PREFIX$i to$j" "$PREFIX$j to$i"; do
			# shellcheck disable=SC2086 # two words: namespace and device
			set -- $end
			ip -n "$1" link set "$2" up
			ip netns exec "$1" sysctl -qw "net.ipv4.conf.$2.rp_filter=0"
			# burst: a few 64 KiB GSO packets, so that fast rates are reached.
			tc -n "$1" qdisc add dev "$2" root handle 1: tbf rate "$rate" burst 256kb latency 100ms
		done
	done
	# Routes: the shorter way round.
	for ((i = 0; i < n; i++)); do
		local left=$(((i + n - 1) % n))
		for ((k = 0; k < n; k++)); do
			[ "$k" = "$i" ] && continue
			if [ $(((k - i + n) % n)) -le $((n / 2)) ]; then
				ip -n "$PREFIX$i" route add "$NET.0.$((k + 1))/32" via "$NET.$((10 + i)).2" src "$NET.0.$((i + 1))"
			else
				ip -n "$PREFIX$i" route add "$NET.0.$((k + 1))/32" via "$NET.$((10 + left)).1" src "$NET.0.$((i + 1))"
			fi
		done
	done
	echo "ringnet.sh: $n hosts $PREFIX""0..$PREFIX$((n - 1)) at $NET.0.1..$NET.0.$n in a ring of $rate links"
}

[ $# -ge 1 ] || usage
cmd=$1
shift
case $cmd in
up | down) check_env ;;
-h | --help | help) usage ;;
*) usage ;;
esac
"cmd_$cmd" "$@"
