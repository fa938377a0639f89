#!/usr/bin/env bash
# netns.sh: a multi-host testbed on one machine, made of network namespaces.
#
#   netns.sh up N [--rate 1gbit] [--delay 1ms] [--loss 0%]
#   netns.sh down
#   netns.sh cut I | restore I
#   netns.sh status
#
# "up" makes namespaces ${PREFIX}h0 .. ${PREFIX}h{N-1}. Host i gets the address
# ${SUBNET}.(i+1)/24 on its eth0, a veth whose other end (${PREFIX}v{i}) is a
# port of the bridge ${PREFIX}br in the root namespace. The bridge has no
# address: the hosts reach each other and nothing else, and nothing outside
# reaches them. Each link is shaped with tc in both directions (egress of eth0
# inside the host, and egress of the bridge port towards the host): a rate
# (token bucket), a delay and a loss (netem). A packet from one host to
# another crosses two shaped links, so its one-way delay is twice --delay.
#
# "cut I" takes host I's bridge port down (the cable is pulled at the switch:
# packets in both directions vanish, no error is reported to either side);
# "restore I" puts it back. "up" is idempotent (it reshapes existing hosts
# and removes hosts >= N), "down" removes everything with the prefix and is
# fine when nothing exists. Needs root and iproute2 only.
#
# Environment:
#   RINGO_NETNS_PREFIX  name prefix (default "ringo-"); at most 11 characters,
#                       since interface names are limited to 15
#   RINGO_NETNS_SUBNET  first three octets of the hosts' /24 (default 10.77.0)
set -euo pipefail

PREFIX=${RINGO_NETNS_PREFIX:-ringo-}
SUBNET=${RINGO_NETNS_SUBNET:-10.77.0}
BRIDGE=${PREFIX}br

NAME=netns.sh
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"

usage() {
	sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//' >&2
	exit 2
}

check_env() {
	need_root_and_tools
	check_prefix RINGO_NETNS_PREFIX "$PREFIX" 11
	[[ $SUBNET =~ ^[0-9]+\.[0-9]+\.[0-9]+$ ]] || die "RINGO_NETNS_SUBNET=$SUBNET is not three octets"
}

# hosts lists the indices of this prefix's existing namespaces.
hosts() { hosts_named "${PREFIX}h"; }

ns_exists() { ip netns list | awk '{print $1}' | grep -qxF -- "$1"; }
link_exists() { ip link show dev "$1" >/dev/null 2>&1; }

# have_netem tells whether the kernel has the netem qdisc (delay, loss).
have_netem() {
	if [ -z "${NETEM:-}" ]; then
		NETEM=no
		local probe=${PREFIX}probe
		ip link add "$probe" type veth peer name "${probe}p" 2>/dev/null || true
		if tc qdisc add dev "$probe" root netem delay 0ms 2>/dev/null; then
			NETEM=yes
		fi
		ip link del "$probe" 2>/dev/null || true
	fi
	[ "$NETEM" = yes ]
}

# shape DEV NS: a rate (tbf) with delay and loss (netem) below it, on DEV's
# egress. Without a delay or loss, no netem is used (so kernels without it
# can still shape rates).
shape() {
	local dev=$1 ns=$2
	local -a tcn=(tc)
	[ -n "$ns" ] && tcn=(tc -n "$ns")
	"${tcn[@]}" qdisc del dev "$dev" root 2>/dev/null || true
	local parent=root
	if [ "$RATE" != none ]; then
		# burst: a few 64 KiB GSO packets, so that fast rates are reached.
		"${tcn[@]}" qdisc add dev "$dev" root handle 1: tbf rate "$RATE" burst 256kb latency 100ms
		parent="parent 1:1"
	fi
	if [ "$NEED_NETEM" = yes ]; then
		# shellcheck disable=SC2086 # parent is one or two words
		"${tcn[@]}" qdisc add dev "$dev" $parent handle 10: netem delay "$DELAY" loss "$LOSS" limit 10000
	fi
}

remove_host() {
	local i=$1
	ip netns del "${PREFIX}h$i" 2>/dev/null || true # takes eth0 and so its peer with it
	ip link del "${PREFIX}v$i" 2>/dev/null || true
}

cmd_up() {
	[ $# -ge 1 ] || usage
	local n=$1
	shift
	[[ $n =~ ^[0-9]+$ ]] && [ "$n" -ge 1 ] && [ "$n" -le 250 ] || die "N=$n: want 1..250 hosts"
	RATE=1gbit DELAY=0ms LOSS=0%
	while [ $# -gt 0 ]; do
		case $1 in
		--rate) RATE=${2:?--rate needs a value (e.g. 1gbit, or none)}; shift 2 ;;
		--delay) DELAY=${2:?--delay needs a value (e.g. 1ms)}; shift 2 ;;
		--loss) LOSS=${2:?--loss needs a value (e.g. 0.1%)}; shift 2 ;;
		--rate=*) RATE=${1#*=}; shift ;;
		--delay=*) DELAY=${1#*=}; shift ;;
		--loss=*) LOSS=${1#*=}; shift ;;
		*) die "up: unknown option $1" ;;
		esac
	done

	NEED_NETEM=no
	if [[ ! $DELAY =~ ^0+(\.0*)?(s|ms|us)?$ ]] || [[ ! $LOSS =~ ^0+(\.0*)?%?$ ]]; then
		NEED_NETEM=yes
		have_netem || die "--delay $DELAY / --loss $LOSS need the kernel's netem qdisc (CONFIG_NET_SCH_NETEM), which this kernel does not have; --rate works without it"
	fi

	if ! link_exists "$BRIDGE"; then
		ip link add "$BRIDGE" type bridge
	fi
	# No STP, no forwarding delay: ports forward as soon as they are up.
	ip link set dev "$BRIDGE" type bridge stp_state 0 forward_delay 0
	ip link set dev "$BRIDGE" up

	local i
	for i in $(hosts); do
		[ "$i" -ge "$n" ] && remove_host "$i"
	done
	for ((i = 0; i < n; i++)); do
		local ns=${PREFIX}h$i veth=${PREFIX}v$i addr=${SUBNET}.$((i + 1))
		ns_exists "$ns" || ip netns add "$ns"
		if ! ip -n "$ns" link show dev eth0 >/dev/null 2>&1; then
			ip link del "$veth" 2>/dev/null || true
			ip link add "$veth" type veth peer name eth0 netns "$ns"
		fi
		ip link set dev "$veth" master "$BRIDGE"
		ip link set dev "$veth" up
		ip -n "$ns" link set dev lo up
		ip -n "$ns" addr replace "$addr/24" dev eth0
		ip -n "$ns" link set dev eth0 up
		shape eth0 "$ns"
		shape "$veth" ""
	done
	echo "netns.sh: $n hosts ${PREFIX}h0..${PREFIX}h$((n - 1)) at ${SUBNET}.1..${SUBNET}.$n on bridge $BRIDGE (rate $RATE, delay $DELAY, loss $LOSS per link direction)"
}

cmd_down() {
	local i
	for i in $(hosts); do
		remove_host "$i"
	done
	ip link del "$BRIDGE" 2>/dev/null || true
}

host_arg() {
	[ $# -eq 1 ] && [[ $1 =~ ^[0-9]+$ ]] || usage
	ns_exists "${PREFIX}h$1" || die "no host ${PREFIX}h$1 (run: $0 up N)"
}

cmd_cut() {
	host_arg "$@"
	ip link set dev "${PREFIX}v$1" down
}

cmd_restore() {
	host_arg "$@"
	ip link set dev "${PREFIX}v$1" up
}

cmd_status() {
	local found=0 i
	for i in $(hosts); do
		found=1
		local ns=${PREFIX}h$i veth=${PREFIX}v$i
		local addr state qd
		addr=$(ip -n "$ns" -4 -o addr show dev eth0 2>/dev/null | awk '{print $4}')
		state=$(ip -o link show dev "$veth" 2>/dev/null | grep -q 'state UP' && echo up || echo CUT)
		qd=$(tc qdisc show dev "$veth" 2>/dev/null | grep -o 'netem.*\|rate [^ ]*' | tr '\n' ' ')
		printf '%-16s %-18s link %-4s %s\n' "$ns" "${addr:-?}" "$state" "$qd"
	done
	[ $found = 1 ] || echo "netns.sh: no hosts with prefix $PREFIX"
}

[ $# -ge 1 ] || usage
cmd=$1
shift
case $cmd in
up | down | cut | restore | status) check_env ;;
-h | --help | help) usage ;;
*) usage ;;
esac
"cmd_$cmd" "$@"
