# lib.sh: what netns.sh and ringnet.sh share. Sourced, not run; the sourcing
# script sets NAME (for messages) before it.

die() { echo "$NAME: $*" >&2; exit 1; }

# need_root_and_tools: both testbeds run ip and tc as root.
need_root_and_tools() {
	command -v ip >/dev/null || die "ip (iproute2) is not installed"
	command -v tc >/dev/null || die "tc (iproute2) is not installed"
	[ "$(id -u)" = 0 ] || die "must run as root"
}

# check_prefix VAR VALUE MAX: a name prefix short enough for interface names
# (15 characters) and made of characters they allow.
check_prefix() {
	[ "${#2}" -le "$3" ] || die "$1=$2 is longer than $3 characters"
	[[ $2 =~ ^[A-Za-z0-9_.-]+$ ]] || die "$1=$2 may hold only letters, digits, '_', '.' and '-'"
}

# hosts_named P: the indices i of the existing namespaces named P<i>, in order.
hosts_named() {
	ip netns list | awk '{print $1}' | while read -r ns; do
		case $ns in
		"$1"*)
			i=${ns#"$1"}
			[[ $i =~ ^[0-9]+$ ]] && echo "$i"
			;;
		esac
	done | sort -n
}
