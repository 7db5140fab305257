#!/bin/sh
# The container's entry point: `podfence-entrypoint podfence run ...`.
#
# The agent sets one sysctl through /proc/sys (rp_filter off on pf-dp, the
# end of the veth pair it creates that the kernel takes packets in on when
# failing open), and container runtimes mount /proc/sys read-only in every
# container that is not privileged. This script makes that mount writable
# again in the container's own mount namespace (nothing of the node's
# mounts changes), which takes CAP_SYS_ADMIN, and then runs the command
# with CAP_SYS_ADMIN and CAP_SETPCAP removed from its capability bounding
# set: the agent never holds either. Where /proc/sys is writable already
# (a privileged container, a root shell on the node) the remount is
# skipped.
set -eu

# Whether capability number $1 is in this process's effective set.
has_cap() {
  eff=$(sed -n 's/^CapEff:[[:space:]]*//p' /proc/self/status)
  [ $(((0x$eff >> $1) & 1)) -eq 1 ]
}
CAP_SETPCAP=8
CAP_SYS_ADMIN=21

probe=/proc/sys/net/ipv4/conf/all/rp_filter
if [ ! -w "$probe" ]; then
  if ! mount -o remount,bind,rw /proc/sys || [ ! -w "$probe" ]; then
    echo "podfence-entrypoint: /proc/sys is read-only and cannot be made writable:" \
      "the container needs CAP_SYS_ADMIN and an AppArmor profile that allows" \
      "mount and writes to /proc/sys/net (deploy/daemonset.yaml sets both)" >&2
    exit 1
  fi
fi

if has_cap "$CAP_SYS_ADMIN"; then
  if ! has_cap "$CAP_SETPCAP"; then
    echo "podfence-entrypoint: CAP_SYS_ADMIN cannot be dropped without CAP_SETPCAP;" \
      "add SETPCAP to the container's capabilities" >&2
    exit 1
  fi
  exec setpriv --inh-caps=-sys_admin,-setpcap --bounding-set=-sys_admin,-setpcap -- "$@"
fi
exec "$@"
