//! Real Debian kernel security updates, built as live patches for the release before them and
//! loaded into that release's stock image booted in QEMU.
//!
//! Debian 12's archive keeps consecutive kernel releases. `scripts/kernel-releases.sh CACHE`
//! prepares each one's exact tree and image side by side (SUTURE_KERNEL_RELEASES=CACHE, set by
//! scripts/test.sh). A fix here is what the next release changed in the files of one changelog
//! entry: `diff -u` of those files between the two trees, computed at test time (nothing of
//! the kernel is stored in this repository). `suture build --kernel` builds it from the older
//! tree with the older image's kallsyms, notes and modules; one boot of the older image per
//! release loads every patch of that release, checks the transition finished, observes the
//! fixed behaviour where a program can reach it, unloads the patch and observes the old
//! behaviour again.
//!
//! | release | next | changelog entry | file | object | in the guest |
//! |---|---|---|---|---|---|
//! | 6.1.0-54 (6.1.190-1) | 6.1.0-55 | fcntl: F_SET_RW_HINT on an immutable file (stable 6.1.191/192) | fs/fcntl.c | vmlinux | `fcntl(F_SET_RW_HINT)` on an immutable tmpfs file: set -> EPERM -> set |
//! | 6.1.0-54 | 6.1.0-55 | time/namespace: validate tv_nsec of a time namespace offset | kernel/time/namespace.c | vmlinux | writing an offset whose nanoseconds are -5 (as 2^64 - 5) to /proc/self/timens_offsets: accepted -> EINVAL -> accepted |
//! | 6.1.0-54 | 6.1.0-55 | crypto: algif_skcipher: refuse a read shorter than a block while more data is due | crypto/algif_skcipher.c | algif_skcipher | AF_ALG cbc(aes), 16 bytes sent with MSG_MORE, an 8-byte read: 0 -> EINVAL -> 0 |
//! | 6.1.0-54 | 6.1.0-55 | mm/mlock: NR_MLOCK updated with the interrupt-safe helper | mm/mlock.c | vmlinux | loaded and unloaded (a counter race, not observable) |
//! | 6.1.0-54 | 6.1.0-55 | binder: free the fixups of an outdated transaction (stable) | drivers/android/binder.c | binder_linux | loaded and unloaded (its function holds a binder tracepoint's jump label) |
//! | 6.1.0-54 | 6.1.0-55 | ixgbe: no XPS setup on XDP rings (stable) | drivers/net/ethernet/intel/ixgbe/ixgbe_main.c | ixgbe | loaded and unloaded (dynamic-debug jump labels; no such NIC in the guest) |
//! | 6.1.0-54 | 6.1.0-55 | ipv4: route: the stable updates to net/ipv4/route.c (PMTU, uncached routes) | net/ipv4/route.c | vmlinux | loaded and unloaded (refers to one of five static `dst_discard`s) |
//! | 6.1.0-54 | 6.1.0-55 | net/mlx5e: the stable updates to en_rx.c | drivers/net/ethernet/mellanox/mlx5/core/en_rx.c | mlx5_core | loaded and unloaded (WARN_ONCE flags among several of one name in the module; no such NIC) |
//! | 6.1.0-54 | 6.1.0-55 | Bluetooth: read req_status with READ_ONCE | net/bluetooth/hci_request.c | bluetooth | loaded and unloaded (a data race, not observable) |
//! | 6.1.0-54 | 6.1.0-55 | iio: st_accel: log ACPI mount-matrix messages on the parent device (stable) | drivers/iio/accel/st_accel_core.c | st_accel | loaded and unloaded (dynamic-debug jump labels, exports of the IIO_ST_SENSORS namespace) |
//! | 6.1.0-55 (6.1.192-1) | 6.1.0-56 | ext4: fix NULL folio dereference in mballoc (#1154101) | fs/ext4/mballoc.c | ext4 | loaded with ext4 in use and unloaded (needs an allocation failure) |
//! | 6.1.0-56 (6.1.192-2) | 6.1.0-57 | nfsd: preflight SEQUENCE replies before accepting a slot (CVE-2026-99362) | fs/nfsd/nfs4state.c | nfsd | loaded with nfsd loaded and unloaded (needs an NFSv4.1 client) |
//! | 6.1.0-54 | 6.1.0-55 | codel: reset first_above_time when the queue empties (stable) | include/net/codel_impl.h | vmlinux (fq_codel), sch_codel, mac80211 | loaded with sch_codel and mac80211 loaded, unloaded (a header-only fix: the units including it rebuilt) |
//! | 6.1.0-54 | 6.1.0-55 | wireguard: keep mono_delivery_time of encapsulated packets (stable) | drivers/net/wireguard/queueing.h | wireguard | loaded with wireguard loaded, unloaded (ten units include the header; send.c's code changes) |
//! | 6.1.0-54 | 6.1.0-55 | f2fs: the stable updates to compress.c | fs/f2fs/compress.c | f2fs | loaded with f2fs loaded, unloaded (a changed out-of-line copy of a header's inline function, `zero_user_segments.constprop.0`, has no ftrace entry: carried as a new function, its caller replaced) |
//!
//! Header changes of the same update that suture refuses (`release_6_1_0_54_header_fixes_refused`,
//! build only): struct unicode_map and struct key_type change their layouts (found in the
//! units' DWARF), and include/linux/list.h reaches more units than `--max-header-units`.
//!
//! The ext4 case was refused before suture gave the patch its own copies of `__func__`
//! strings (gcc's `__func__.25` is defined five times in that ext4.ko).

mod guest;

use std::path::{Path, PathBuf};
use std::process::Command;

use guest::{boot, GuestKernel, Initramfs, Script};

/// One fix: the files the next release changed for one changelog entry.
struct Fix {
    name: &'static str,
    next: &'static str,
    files: &'static [&'static str],
    /// The object the patch targets (`vmlinux` or a module name).
    object: &'static str,
    /// Stock modules loaded in the guest before the patch (the patched module and what uses it).
    modules: &'static [&'static str],
    /// A guest command and what it prints before the patch and with it.
    observe: Option<(&'static str, &'static str, &'static str)>,
    /// For a fix that changes headers: the units of the module the headers made suture
    /// rebuild (each with the objects' code changed), as (unit, object).
    rebuilt: &'static [(&'static str, &'static str)],
}

/// Sets FS_IMMUTABLE_FL on a file and tries F_SET_RW_HINT on it.
const RWHINT_C: &str = r#"
#include <errno.h>
#include <fcntl.h>
#include <linux/fs.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#ifndef F_SET_RW_HINT
#define F_SET_RW_HINT 1036
#endif
int main(int argc, char **argv) {
    int fd = open(argc > 1 ? argv[1] : "/tmp/rwhint", O_RDWR | O_CREAT, 0644), flags = FS_IMMUTABLE_FL;
    if (fd < 0 || ioctl(fd, FS_IOC_SETFLAGS, &flags) != 0) {
        perror("setup");
        return 1;
    }
    uint64_t hint = 2; /* RWH_WRITE_LIFE_SHORT */
    int r = fcntl(fd, F_SET_RW_HINT, &hint);
    printf("rw_hint=%s\n", r == 0 ? "set" : strerror(errno));
    flags = 0;
    ioctl(fd, FS_IOC_SETFLAGS, &flags);
    return 0;
}
"#;

/// Writes an offset with a negative nanosecond part for a new time namespace: /proc parses it
/// with `%lu` into a signed field and only checks the upper bound, so 2^64 - 5 arrives as -5.
const TIMENS_C: &str = r#"
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#ifndef CLONE_NEWTIME
#define CLONE_NEWTIME 0x00000080
#endif
int main(void) {
    if (unshare(CLONE_NEWTIME) != 0) {
        perror("unshare");
        return 1;
    }
    int fd = open("/proc/self/timens_offsets", O_WRONLY);
    if (fd < 0) {
        perror("open");
        return 1;
    }
    const char *s = "monotonic 1 18446744073709551611\n";
    ssize_t n = write(fd, s, strlen(s));
    printf("offset=%s\n", n >= 0 ? "accepted" : strerror(errno));
    return 0;
}
"#;

/// AF_ALG cbc(aes): one block sent with MSG_MORE, then a read of half a block.
const ALG_C: &str = r#"
#include <errno.h>
#include <linux/if_alg.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#ifndef SOL_ALG
#define SOL_ALG 279
#endif
int main(void) {
    struct sockaddr_alg sa = {.salg_family = AF_ALG};
    strcpy((char *)sa.salg_type, "skcipher");
    strcpy((char *)sa.salg_name, "cbc(aes)");
    unsigned char key[16] = {1}, block[16] = {2}, out[8];
    int t = socket(AF_ALG, SOCK_SEQPACKET, 0);
    if (t < 0 || bind(t, (struct sockaddr *)&sa, sizeof sa) != 0 ||
        setsockopt(t, SOL_ALG, ALG_SET_KEY, key, sizeof key) != 0) {
        perror("setup");
        return 1;
    }
    int o = accept(t, NULL, 0);
    if (o < 0) {
        perror("accept");
        return 1;
    }
    char cbuf[CMSG_SPACE(4) + CMSG_SPACE(4 + 16)];
    memset(cbuf, 0, sizeof cbuf);
    struct iovec iov = {block, sizeof block};
    struct msghdr m = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = cbuf,
                       .msg_controllen = sizeof cbuf};
    struct cmsghdr *c = CMSG_FIRSTHDR(&m);
    c->cmsg_level = SOL_ALG;
    c->cmsg_type = ALG_SET_OP;
    c->cmsg_len = CMSG_LEN(4);
    *(unsigned *)CMSG_DATA(c) = ALG_OP_ENCRYPT;
    c = CMSG_NXTHDR(&m, c);
    c->cmsg_level = SOL_ALG;
    c->cmsg_type = ALG_SET_IV;
    c->cmsg_len = CMSG_LEN(4 + 16);
    struct af_alg_iv *iv = (struct af_alg_iv *)CMSG_DATA(c);
    iv->ivlen = 16;
    if (sendmsg(o, &m, MSG_MORE) != (ssize_t)sizeof block) {
        perror("sendmsg");
        return 1;
    }
    ssize_t n = recv(o, out, sizeof out, 0);
    if (n >= 0)
        printf("short_read=%zd\n", n);
    else
        printf("short_read=%s\n", strerror(errno));
    return 0;
}
"#;

/// copy_file_range from an empty file to an offset past RLIMIT_FSIZE: nothing to copy.
const COPYRANGE_C: &str = r#"
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>
int main(void) {
    signal(SIGXFSZ, SIG_IGN);
    int in = open("/tmp/cfr-in", O_RDWR | O_CREAT | O_TRUNC, 0600);
    int out = open("/tmp/cfr-out", O_RDWR | O_CREAT | O_TRUNC, 0600);
    struct rlimit r = {1000, 1000};
    if (in < 0 || out < 0 || setrlimit(RLIMIT_FSIZE, &r) != 0) {
        perror("setup");
        return 1;
    }
    off64_t off = 2000;
    ssize_t n = copy_file_range(in, NULL, out, &off, 10, 0);
    printf("copy_range=%s\n", n >= 0 ? "0" : strerror(errno));
    return 0;
}
"#;

/// statx on tmpfs: whether the attributes mask names STATX_ATTR_VERITY.
const STATX_C: &str = r#"
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <sys/stat.h>
#ifndef STATX_ATTR_VERITY
#define STATX_ATTR_VERITY 0x00100000
#endif
int main(void) {
    struct statx st;
    if (statx(AT_FDCWD, "/tmp", 0, STATX_BASIC_STATS, &st) != 0) {
        perror("statx");
        return 1;
    }
    printf("verity_mask=%d\n", (st.stx_attributes_mask & STATX_ATTR_VERITY) != 0);
    return 0;
}
"#;

/// mount of a block device node whose device number is 0.
const BDEV0_C: &str = r#"
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>
int main(void) {
    unlink("/tmp/bdev0");
    if (mknod("/tmp/bdev0", S_IFBLK | 0600, makedev(0, 0)) != 0) {
        perror("mknod");
        return 1;
    }
    mkdir("/tmp/bdev0-mnt", 0700);
    int r = mount("/tmp/bdev0", "/tmp/bdev0-mnt", "ext4", 0, NULL);
    printf("mount_dev0=<%s>\n", r == 0 ? "mounted" : strerror(errno));
    return 0;
}
"#;

const FIXES: &[(&str, &[Fix])] = &[
    (
        "6.1.0-54",
        &[
            Fix {
                name: "fcntl_rw_hint",
                next: "6.1.0-55",
                files: &["fs/fcntl.c"],
                object: "vmlinux",
                modules: &[],
                observe: Some((
                    "/bin/rwhint /tmp/rwhint",
                    "rw_hint=set",
                    "rw_hint=Operation not permitted",
                )),
                rebuilt: &[],
            },
            Fix {
                name: "timens_offset",
                next: "6.1.0-55",
                files: &["kernel/time/namespace.c"],
                object: "vmlinux",
                modules: &[],
                observe: Some(("/bin/timens", "offset=accepted", "offset=Invalid argument")),
                rebuilt: &[],
            },
            Fix {
                name: "algif_short_read",
                next: "6.1.0-55",
                files: &["crypto/algif_skcipher.c"],
                object: "algif_skcipher",
                modules: &["algif_skcipher"],
                observe: Some(("/bin/alg", "short_read=0", "short_read=Invalid argument")),
                rebuilt: &[],
            },
            Fix {
                name: "mlock_counter",
                next: "6.1.0-55",
                files: &["mm/mlock.c"],
                object: "vmlinux",
                modules: &[],
                observe: None,
                rebuilt: &[],
            },
            // The patched functions of these three module fixes hold jump labels on keys of
            // their own module (a tracepoint, dynamic-debug descriptors), which the module
            // loader processes before livepatch can resolve module symbols: the generated
            // module points them at a disabled key of its own (a note says so), and st_accel
            // also uses exports of the IIO_ST_SENSORS namespace, which it must import.
            Fix {
                name: "binder_tracepoint",
                next: "6.1.0-55",
                files: &["drivers/android/binder.c"],
                object: "binder_linux",
                modules: &["binder_linux"],
                observe: None,
                rebuilt: &[],
            },
            Fix {
                name: "ixgbe_ddebug",
                next: "6.1.0-55",
                files: &["drivers/net/ethernet/intel/ixgbe/ixgbe_main.c"],
                object: "ixgbe",
                modules: &["ixgbe"],
                observe: None,
                rebuilt: &[],
            },
            // route.c's dst_discard is one of five in vmlinux, and the unit's __init
            // function lies far from the rest of it: found by its neighbours.
            Fix {
                name: "route_pmtu",
                next: "6.1.0-55",
                files: &["net/ipv4/route.c"],
                object: "vmlinux",
                modules: &[],
                observe: None,
                rebuilt: &[],
            },
            // Debian's modules have no file symbols: the once-flags (`__already_done.N`, each
            // defined several times in mlx5_core.ko) are found by their neighbours in the
            // symbol table; hci_request.c's dynamic-debug data carries its own __func__.
            Fix {
                name: "mlx5_rx_once",
                next: "6.1.0-55",
                files: &["drivers/net/ethernet/mellanox/mlx5/core/en_rx.c"],
                object: "mlx5_core",
                modules: &["mlx5_core"],
                observe: None,
                rebuilt: &[],
            },
            Fix {
                name: "hci_req_pend",
                next: "6.1.0-55",
                files: &["net/bluetooth/hci_request.c"],
                object: "bluetooth",
                modules: &["bluetooth"],
                observe: None,
                rebuilt: &[],
            },
            Fix {
                name: "st_accel_namespace",
                next: "6.1.0-55",
                files: &["drivers/iio/accel/st_accel_core.c"],
                object: "st_accel",
                modules: &["st_accel"],
                observe: None,
                rebuilt: &[],
            },
        ],
    ),
    (
        "6.1.0-55",
        &[Fix {
            name: "ext4_mballoc_folio",
            next: "6.1.0-56",
            files: &["fs/ext4/mballoc.c"],
            object: "ext4",
            modules: &["ext4"],
            observe: None,
            rebuilt: &[],
        }],
    ),
    (
        "6.1.0-56",
        &[Fix {
            name: "nfsd_sequence",
            next: "6.1.0-57",
            files: &["fs/nfsd/nfs4state.c"],
            object: "nfsd",
            modules: &["nfsd"],
            observe: None,
            rebuilt: &[],
        }],
    ),
];

/// Real fixes of 6.1.0-55 that change a header: suture rebuilds the units including it, keeps
/// those whose code changed and patches them like any changed function.
const HEADER_FIXES: &[Fix] = &[
    // codel: reset first_above_time when the queue runs empty. A header-only fix to an inline
    // function three units include: fq_codel (built into vmlinux), sch_codel and mac80211.
    Fix {
        name: "codel_empty_queue",
        next: "6.1.0-55",
        files: &["include/net/codel_impl.h"],
        object: "sch_codel",
        modules: &["sch_codel", "mac80211"],
        observe: None,
        rebuilt: &[
            ("net/mac80211/tx.c", "mac80211"),
            ("net/sched/sch_codel.c", "sch_codel"),
            ("net/sched/sch_fq_codel.c", "vmlinux"),
        ],
    },
    // wireguard: keep mono_delivery_time when a packet is reset for encapsulation. Ten units
    // include queueing.h; only send.c's code changes (receive.c calls the helper with
    // `encapsulating` false, where the change is dead code).
    Fix {
        name: "wireguard_reset_packet",
        next: "6.1.0-55",
        files: &["drivers/net/wireguard/queueing.h"],
        object: "wireguard",
        modules: &["wireguard"],
        observe: None,
        rebuilt: &[("drivers/net/wireguard/send.c", "wireguard")],
    },
    // f2fs: the fix changes a caller of zero_user_segments, a header's inline function gcc
    // kept out of line as `zero_user_segments.constprop.0`, without an ftrace entry (the
    // kernel's `inline` is notrace): the patch carries that copy as a new function and
    // replaces its callers.
    Fix {
        name: "f2fs_inline_clone",
        next: "6.1.0-55",
        files: &["fs/f2fs/compress.c"],
        object: "f2fs",
        modules: &["f2fs"],
        observe: None,
        rebuilt: &[],
    },
];

/// Real updates of 6.1.0-55 that change headers and that suture refuses: (fix, extra
/// arguments, a text the refusal must contain).
const REFUSED_HEADER_FIXES: &[(Fix, &[&str], &str)] = &[
    // struct unicode_map gains an rcu_head: its objects live in the running kernel.
    (
        Fix {
            name: "unicode_map_rcu",
            next: "6.1.0-55",
            files: &["include/linux/unicode.h", "fs/unicode/utf8-core.c"],
            object: "vmlinux",
            modules: &[],
            observe: None,
            rebuilt: &[],
        },
        &[],
        "struct unicode_map changes its layout: its size changes from 32 to 48 bytes; member \
         `rcu` is added at byte 32",
    ),
    // struct key_type gains index_id: every key type (key_type_user...) is such an object.
    // key-type.h reaches 66 configured units besides the fix's own; the layout change is
    // found in the first unit compiled (the fix's own), so none of them is compiled.
    (
        Fix {
            name: "key_type_index",
            next: "6.1.0-55",
            files: &[
                "include/linux/key-type.h",
                "security/keys/key.c",
                "security/keys/keyctl.c",
                "security/keys/keyring.c",
            ],
            object: "vmlinux",
            modules: &[],
            observe: None,
            rebuilt: &[],
        },
        &[],
        "struct key_type changes its layout: its size changes from 168 to 176 bytes",
    ),
    // list.h: a core header; the update's change reaches most of the kernel.
    (
        Fix {
            name: "list_core_header",
            next: "6.1.0-55",
            files: &["include/linux/list.h"],
            object: "vmlinux",
            modules: &[],
            observe: None,
            rebuilt: &[],
        },
        &[],
        "more than the limit of 100 (--max-header-units): include/linux/list.h reaches",
    ),
];

/// Debian 13's 6.12 (an IBT kernel built with gcc-14): fixes of 6.12.116 over 6.12.115 and of
/// 6.12.117 over 6.12.116, built in the releases' trixie chroot (`scripts/kernel-releases.sh
/// --trixie`).
const FIXES_6_12: &[(&str, &[Fix])] = &[
    (
        "6.12.115+deb13",
        &[
            Fix {
                name: "xen_netback_mcast",
                next: "6.12.116+deb13",
                files: &[
                    "drivers/net/xen-netback/interface.c",
                    "drivers/net/xen-netback/xenbus.c",
                ],
                object: "xen_netback",
                modules: &[],
                observe: None,
                rebuilt: &[],
            },
            Fix {
                name: "usb_audio_urb_bound",
                next: "6.12.116+deb13",
                files: &["sound/usb/pcm.c"],
                object: "snd_usb_audio",
                modules: &["snd-usb-audio"],
                observe: None,
                rebuilt: &[],
            },
        ],
    ),
    (
        "6.12.116+deb13",
        &[
            Fix {
                name: "copy_range_empty",
                next: "6.12.117+deb13",
                files: &["fs/read_write.c"],
                object: "vmlinux",
                modules: &[],
                observe: Some((
                    "/bin/copyrange",
                    "copy_range=File too large",
                    "copy_range=0",
                )),
                rebuilt: &[],
            },
            Fix {
                name: "statx_verity_mask",
                next: "6.12.117+deb13",
                files: &["fs/stat.c"],
                object: "vmlinux",
                modules: &[],
                observe: Some(("/bin/statxv", "verity_mask=0", "verity_mask=1")),
                rebuilt: &[],
            },
            Fix {
                name: "bdev_rdev0",
                next: "6.12.117+deb13",
                files: &["block/bdev.c"],
                object: "vmlinux",
                modules: &["ext4"],
                observe: Some((
                    "/bin/bdev0",
                    "mount_dev0=<No such device or address>",
                    "mount_dev0=<No such device>",
                )),
                rebuilt: &[],
            },
            Fix {
                name: "ebtables_counters",
                next: "6.12.117+deb13",
                files: &["net/bridge/netfilter/ebtables.c"],
                object: "ebtables",
                modules: &["ebtables"],
                observe: None,
                rebuilt: &[],
            },
        ],
    ),
];

/// Fixes of modules the guest cannot load (xen-netback needs a Xen domain): livepatch holds
/// their patch until the module loads (`patched` stays 0).
const NOT_LOADED: &[&str] = &["xen_netback_mcast"];

/// Real updates of 6.12.116 that suture refuses: a struct layout change.
const REFUSED_6_12: &[(Fix, &[&str], &str)] = &[(
    Fix {
        name: "xen_blkback_rings_lock",
        next: "6.12.116+deb13",
        files: &[
            "drivers/block/xen-blkback/common.h",
            "drivers/block/xen-blkback/xenbus.c",
        ],
        object: "xen_blkback",
        modules: &[],
        observe: None,
        rebuilt: &[],
    },
    &[],
    "struct xen_blkif changes its layout",
)];

/// The prepared 6.12 releases (SUTURE_KERNEL_RELEASES_6_12), or `None` with a note (locally) or
/// a panic (under `CI`).
fn releases_6_12() -> Option<PathBuf> {
    let cache =
        suture_testkit::tier::require("SUTURE_KERNEL_RELEASES_6_12", "kernel-releases-6.12")?;
    for (release, fixes) in FIXES_6_12 {
        for r in std::iter::once(*release).chain(fixes.iter().map(|f| f.next)) {
            let tree = cache.join(format!("kernel-tree-{r}"));
            if !tree.join(".suture-ready").exists() || tree_chroot(&tree).is_none() {
                return suture_testkit::tier::unavailable(
                    "kernel-releases-6.12",
                    &format!(
                        "{} is not prepared (scripts/kernel-releases.sh --trixie {})",
                        tree.display(),
                        cache.display()
                    ),
                );
            }
        }
    }
    Some(cache)
}

/// The prepared releases (SUTURE_KERNEL_RELEASES), or `None` with a note (locally) or a panic
/// (under `CI`).
fn releases() -> Option<PathBuf> {
    let cache = suture_testkit::tier::require("SUTURE_KERNEL_RELEASES", "kernel-releases")?;
    let header = ("6.1.0-54", HEADER_FIXES);
    for (release, fixes) in FIXES.iter().chain([&header]) {
        for r in std::iter::once(*release).chain(fixes.iter().map(|f| f.next)) {
            let tree = cache.join(format!("kernel-tree-{r}"));
            if !tree.join(".suture-ready").exists() {
                return suture_testkit::tier::unavailable(
                    "kernel-releases",
                    &format!(
                        "{} is not prepared (scripts/kernel-releases.sh {})",
                        tree.display(),
                        cache.display()
                    ),
                );
            }
        }
    }
    Some(cache)
}

/// The fix as a -p1 unified diff: the next release's files against the older tree's.
fn fix_diff(cache: &Path, release: &str, fix: &Fix, out: &Path) {
    let mut diff = String::new();
    for f in fix.files {
        let o = Command::new("diff")
            .args([
                "-u",
                "--label",
                &format!("a/{f}"),
                "--label",
                &format!("b/{f}"),
            ])
            .arg(cache.join(format!("kernel-tree-{release}")).join(f))
            .arg(cache.join(format!("kernel-tree-{}", fix.next)).join(f))
            .output()
            .expect("diff runs");
        assert_eq!(
            o.status.code(),
            Some(1),
            "{f} does not differ between {release} and {}: {}",
            fix.next,
            String::from_utf8_lossy(&o.stderr)
        );
        diff.push_str(&String::from_utf8_lossy(&o.stdout));
    }
    std::fs::write(out, diff).unwrap();
}

/// `suture build --kernel --json` of one fix for `kernel`: its exit code and report.
fn suture_build(
    cache: &Path,
    release: &str,
    kernel: &GuestKernel,
    fix: &Fix,
    work: &Path,
    extra: &[&str],
) -> (Option<i32>, serde_json::Value, String) {
    let diff = work.join(format!("{}.diff", fix.name));
    fix_diff(cache, release, fix, &diff);
    suture_build_diff(cache, release, kernel, fix.name, &diff, work, extra)
}

/// `suture build --kernel --json` of the fix `diff` (called `name`) for `kernel`: its exit
/// code and report.
fn suture_build_diff(
    cache: &Path,
    release: &str,
    kernel: &GuestKernel,
    name: &str,
    diff: &Path,
    work: &Path,
    extra: &[&str],
) -> (Option<i32>, serde_json::Value, String) {
    let kallsyms = guest::kallsyms(kernel);
    let notes = guest::notes(kernel);
    let out = work.join(name);
    let id = format!("suture_{name}");
    let tree = cache.join(format!("kernel-tree-{release}"));
    let args =
        |c: &mut Command, tree: &Path, diff: &Path, out: &Path, k: &Path, n: &Path, m: &Path| {
            c.args(["build", "--kernel", "--json", "--id", &id, "--source"])
                .arg(tree)
                .arg("--diff")
                .arg(diff)
                .arg("-o")
                .arg(out)
                .arg("--kallsyms")
                .arg(k)
                .arg("--kernel-notes")
                .arg(n)
                .arg("--modules")
                .arg(m)
                .args(extra);
        };
    let o = match tree_chroot(&tree) {
        None => {
            let mut c = Command::new(env!("CARGO_BIN_EXE_suture"));
            args(
                &mut c,
                &tree,
                diff,
                &out,
                &kallsyms,
                &notes,
                &kernel.dir.join("modules"),
            );
            c.output().expect("suture runs")
        }
        Some(root) => {
            // The release's compiler and kbuild tools run only in its chroot, so suture runs
            // there, with copies of its inputs (the modules as hard links) in a directory of it.
            let inner = PathBuf::from(format!("/tmp/suture-real-{}-{name}", std::process::id()));
            let host = root.join(inner.strip_prefix("/").unwrap());
            let _ = std::fs::remove_dir_all(&host);
            std::fs::create_dir_all(&host).unwrap();
            for (from, to) in [
                (PathBuf::from(env!("CARGO_BIN_EXE_suture")), "suture"),
                (diff.to_path_buf(), "fix.diff"),
                (kallsyms.clone(), "kallsyms"),
                (notes.clone(), "notes"),
            ] {
                std::fs::copy(&from, host.join(to)).unwrap();
            }
            let cp = Command::new("cp")
                .arg("-al")
                .arg(kernel.dir.join("modules"))
                .arg(host.join("modules"))
                .status()
                .unwrap();
            assert!(cp.success(), "linking the modules into {}", host.display());
            let tree_in = std::fs::canonicalize(&tree).unwrap();
            let tree_in = Path::new("/").join(tree_in.strip_prefix(&root).unwrap());
            let mut c = Command::new("unshare");
            // A private mount namespace: the chroot's /proc and the bind mount making its root a
            // mount point (which suture's own `unshare --propagation private` needs) end with it.
            c.args([
                "--mount",
                "--fork",
                "sh",
                "-c",
                "mount --bind \"$1\" \"$1\" && mount -t proc proc \"$1/proc\" && r=$1 && shift && \
                 exec chroot \"$r\" \"$@\"",
                "sh",
            ])
            .arg(&root)
            .arg(inner.join("suture"));
            args(
                &mut c,
                &tree_in,
                &inner.join("fix.diff"),
                &inner.join("out"),
                &inner.join("kallsyms"),
                &inner.join("notes"),
                &inner.join("modules"),
            );
            let o = c.output().expect("suture runs in the chroot");
            let ko = host.join("out").join(format!("{id}.ko"));
            if ko.exists() {
                std::fs::create_dir_all(&out).unwrap();
                std::fs::copy(&ko, out.join(format!("{id}.ko"))).unwrap();
            }
            let _ = std::fs::remove_dir_all(&host);
            o
        }
    };
    let stdout = String::from_utf8_lossy(&o.stdout);
    let stderr = String::from_utf8_lossy(&o.stderr);
    let j: serde_json::Value = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("{name}: build JSON: {e}\n{stdout}{stderr}"));
    (o.status.code(), j, stderr.into_owned())
}

/// The chroot a tree was prepared in (`scripts/kernel-tree.sh --chroot`), if any.
fn tree_chroot(tree: &Path) -> Option<PathBuf> {
    let ready = std::fs::read_to_string(tree.join(".suture-ready")).ok()?;
    ready
        .lines()
        .find_map(|l| l.strip_prefix("chroot="))
        .map(PathBuf::from)
}

/// `suture build --kernel --json` of one fix for `kernel`; the module's path.
fn build(cache: &Path, release: &str, kernel: &GuestKernel, fix: &Fix, work: &Path) -> PathBuf {
    let id = format!("suture_{}", fix.name);
    let out = work.join(fix.name);
    let (code, j, stderr) = suture_build(cache, release, kernel, fix, work, &[]);
    assert_eq!(
        code,
        Some(0),
        "{}: suture build --kernel for {release}:\n{j}\n{stderr}",
        fix.name
    );
    assert_eq!(j["status"], "built", "{j}");
    if !fix.rebuilt.is_empty() {
        let mut rebuilt: Vec<(String, String)> = j["units"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|u| u["because_of"].as_array().is_some_and(|a| !a.is_empty()))
            .map(|u| {
                (
                    u["file"].as_str().unwrap().into(),
                    u["object"].as_str().unwrap().into(),
                )
            })
            .collect();
        rebuilt.sort();
        let want: Vec<(String, String)> = fix
            .rebuilt
            .iter()
            .map(|(u, o)| (u.to_string(), o.to_string()))
            .collect();
        assert_eq!(rebuilt, want, "{}: {j}", fix.name);
    }
    let ko = out.join(format!("{id}.ko"));
    assert!(ko.exists(), "{} missing:\n{j}", ko.display());
    ko
}

/// Builds every fix of one release and runs them in one boot of its image.
fn run_release(cache: &Path, release: &str, fixes: &[Fix]) {
    let kernel = guest::release(cache, release).unwrap_or_else(|| {
        panic!(
            "release {release} is not prepared in {} (scripts/kernel-releases.sh)",
            cache.display()
        )
    });
    let work = guest::scratch(&format!("real-kernel-{release}"));
    let mut initramfs = Initramfs::new();
    initramfs.suture();
    for (name, src) in [
        ("rwhint", RWHINT_C),
        ("timens", TIMENS_C),
        ("alg", ALG_C),
        ("copyrange", COPYRANGE_C),
        ("statxv", STATX_C),
        ("bdev0", BDEV0_C),
    ] {
        let c = work.join(format!("{name}.c"));
        std::fs::write(&c, src).unwrap();
        let exe = guest::build_program(&c, &work.join(name));
        initramfs.program(&format!("/bin/{name}"), &exe);
    }
    let mut s = Script::new();
    for fix in fixes {
        let ko = build(cache, release, &kernel, fix, &work);
        let id = format!("suture_{}", fix.name);
        initramfs.file(&format!("/m/{id}.ko"), &ko);
        for m in fix.modules {
            initramfs.stock_module(&kernel, m);
        }
        let n = fix.name;
        let modprobe: String = fix
            .modules
            .iter()
            .map(|m| format!("modprobe {m} && "))
            .collect();
        let observe = fix.observe.map(|(cmd, _, _)| cmd).unwrap_or("true");
        s.step(&format!("{n}-before"), &format!("{modprobe}{observe}"))
            .step(
                &format!("{n}-load"),
                &format!(
                    "suture kernel load /m/{id}.ko && \
                     echo \"transition=$(cat /sys/kernel/livepatch/{id}/transition)\" && \
                     echo \"patched=$(cat /sys/kernel/livepatch/{id}/{}/patched)\" && {observe}",
                    fix.object
                ),
            )
            .step(
                &format!("{n}-unload"),
                &format!(
                    "suture kernel unload {id} && \
                     echo \"gone=$(ls /sys/kernel/livepatch | grep -c {id})\" && {observe}"
                ),
            );
    }
    let b = boot(
        &kernel,
        &format!("real-kernel-{release}"),
        &mut initramfs,
        &s,
    );
    for fix in fixes {
        let n = fix.name;
        let (before, after) = fix
            .observe
            .map(|(_, b, a)| (vec![b], vec![a]))
            .unwrap_or_default();
        b.expect(&format!("{n}-before"), 0, &before);
        let patched = if NOT_LOADED.contains(&n) {
            "patched=0"
        } else {
            "patched=1"
        };
        let mut live = vec!["transition=0", patched];
        live.extend(&after);
        b.expect(&format!("{n}-load"), 0, &live);
        let mut gone = vec!["gone=0"];
        gone.extend(&before);
        b.expect(&format!("{n}-unload"), 0, &gone);
    }
}

#[test]
fn release_6_1_0_54_stable_fixes_live() {
    let Some(cache) = releases() else { return };
    run_release(&cache, FIXES[0].0, FIXES[0].1);
}

#[test]
fn release_6_1_0_55_ext4_fix_live() {
    let Some(cache) = releases() else { return };
    run_release(&cache, FIXES[1].0, FIXES[1].1);
}

#[test]
fn release_6_1_0_56_nfsd_fix_live() {
    let Some(cache) = releases() else { return };
    run_release(&cache, FIXES[2].0, FIXES[2].1);
}

#[test]
fn release_6_1_0_54_header_fixes_live() {
    let Some(cache) = releases() else { return };
    run_release(&cache, "6.1.0-54", HEADER_FIXES);
}

/// Header changes suture must refuse, with the reason: a changed struct layout (from the
/// units' DWARF, found in the fix's own unit before any other is compiled) and a core header
/// reaching more units than the limit (before anything is compiled).
#[test]
fn release_6_1_0_54_header_fixes_refused() {
    let Some(cache) = releases() else { return };
    for j in refused(&cache, "6.1.0-54", REFUSED_HEADER_FIXES) {
        assert!(j["headers"][0]["header"].is_string(), "{j}");
    }
}

/// Builds each fix of `release`, checks it is refused with its reason; the reports.
fn refused(cache: &Path, release: &str, fixes: &[(Fix, &[&str], &str)]) -> Vec<serde_json::Value> {
    let kernel = guest::release(cache, release).expect("release prepared");
    let work = guest::scratch(&format!("real-kernel-{release}-refused"));
    let mut out = Vec::new();
    for (fix, extra, why) in fixes {
        let (code, j, stderr) = suture_build(cache, release, &kernel, fix, &work, extra);
        assert_eq!(code, Some(2), "{}: {j}\n{stderr}", fix.name);
        assert_eq!(j["status"], "unsupported", "{j}");
        let reasons = j["reasons"].to_string();
        assert!(reasons.contains(why), "{}: {reasons}", fix.name);
        out.push(j);
    }
    let _ = std::fs::remove_dir_all(&work);
    out
}

/// Debian 13's 6.12.115 (IBT): two module fixes of 6.12.116, one of a module the guest cannot
/// load.
#[test]
fn release_6_12_115_fixes_live() {
    let Some(cache) = releases_6_12() else { return };
    run_release(&cache, FIXES_6_12[0].0, FIXES_6_12[0].1);
}

/// Debian 13's 6.12.116 (IBT): three vmlinux fixes of 6.12.117 observed in the guest, and one
/// of the ebtables module.
#[test]
fn release_6_12_116_fixes_live() {
    let Some(cache) = releases_6_12() else { return };
    run_release(&cache, FIXES_6_12[1].0, FIXES_6_12[1].1);
}

/// 6.12.116's xen-blkback fix adds a lock to struct xen_blkif: refused from the DWARF layouts.
#[test]
fn release_6_12_115_layout_fix_refused() {
    let Some(cache) = releases_6_12() else { return };
    refused(&cache, "6.12.115+deb13", REFUSED_6_12);
}

/// A fix (not Debian's) that makes 6.12.116's newfstat call the static `cp_new_stat` through a
/// pointer. The running `cp_new_stat` has no ENDBR (gcc gives a static function one only when
/// its address is taken), so with IBT that call would oops: refused as `ibt-address-taken`.
#[test]
fn release_6_12_116_new_function_pointer_refused() {
    let Some(cache) = releases_6_12() else { return };
    let release = "6.12.116+deb13";
    let kernel = guest::release(&cache, release).expect("release prepared");
    let work = guest::scratch("real-kernel-6.12-ibt");
    let diff = work.join("newfstat-pointer.diff");
    std::fs::write(
        &diff,
        "--- a/fs/stat.c\n+++ b/fs/stat.c\n@@ -513,9 +513,10 @@\n {\n \tstruct kstat stat;\n \
         \tint error = vfs_fstat(fd, &stat);\n+\tint (*volatile copy)(struct kstat *, struct stat __user *) = cp_new_stat;\n \n \
         \tif (!error)\n-\t\terror = cp_new_stat(&stat, statbuf);\n+\t\terror = copy(&stat, statbuf);\n \n \treturn error;\n }\n",
    )
    .unwrap();
    let (code, j, stderr) = suture_build_diff(
        &cache,
        release,
        &kernel,
        "newfstat_pointer",
        &diff,
        &work,
        &[],
    );
    assert_eq!(code, Some(2), "{j}\n{stderr}");
    assert_eq!(j["status"], "unsupported", "{j}");
    let r = j["reasons"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["kind"] == "ibt-address-taken")
        .unwrap_or_else(|| panic!("no ibt-address-taken refusal: {j}"));
    assert_eq!(r["symbol"], "cp_new_stat", "{j}");
    assert!(r["reason"].as_str().unwrap().contains("ENDBR"), "{j}");
    let _ = std::fs::remove_dir_all(&work);
}

/// What the running kernel's function entries hold: `ENDBR64`, the NOP the kernel writes over a
/// sealed one (6.12's `gen_endbr_poison`: `osp nopl (%rax)`), or neither. Reads
/// /proc/kallsyms and /proc/kcore.
const ENDBR_C: &str = r#"
#include <elf.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
static Elf64_Phdr ph[256];
static int nph, kc;
static int at(unsigned long a, unsigned char *b) {
    for (int i = 0; i < nph; i++)
        if (ph[i].p_type == PT_LOAD && a >= ph[i].p_vaddr && a + 4 <= ph[i].p_vaddr + ph[i].p_filesz)
            return pread(kc, b, 4, ph[i].p_offset + (a - ph[i].p_vaddr)) == 4;
    return 0;
}
static const char *kind(const unsigned char *b) {
    static const unsigned char endbr[4] = {0xf3, 0x0f, 0x1e, 0xfa}, sealed[4] = {0x66, 0x0f, 0x1f, 0x00};
    return !memcmp(b, endbr, 4) ? "endbr" : !memcmp(b, sealed, 4) ? "sealed" : "none";
}
int main(int argc, char **argv) {
    Elf64_Ehdr eh;
    kc = open("/proc/kcore", O_RDONLY);
    if (kc < 0 || pread(kc, &eh, sizeof eh, 0) != sizeof eh || eh.e_phnum > 256) { perror("kcore"); return 1; }
    nph = eh.e_phnum;
    pread(kc, ph, sizeof(Elf64_Phdr) * nph, eh.e_phoff);
    FILE *k = fopen("/proc/kallsyms", "r");
    char line[512], name[256], t;
    unsigned long a;
    long n[3] = {0};
    while (fgets(line, sizeof line, k)) {
        if (sscanf(line, "%lx %c %255s", &a, &t, name) != 3 || (t != 't' && t != 'T') || strchr(line, '[')) continue;
        unsigned char b[4];
        if (!at(a, b)) continue;
        const char *w = kind(b);
        n[w[0] == 'e' ? 0 : w[0] == 's' ? 1 : 2]++;
        for (int i = 1; i < argc; i++)
            if (!strcmp(argv[i], name)) printf("%s=%s\n", name, w);
    }
    printf("entries endbr=%ld sealed=%ld none=%ld\n", n[0], n[1], n[2]);
    return 0;
}
"#;

/// The facts the IBT rule rests on, in the running stock 6.12.116 (built by Debian with IBT;
/// the kernel seals even where the CPU has no IBT): the static `cp_new_stat`, whose address
/// fs/stat.c never takes, has no ENDBR at all; the global `vfs_fstat`, not exported and
/// called only directly, has a sealed one; the exported `fput` keeps its ENDBR; and thousands
/// of entries are sealed.
#[test]
fn release_6_12_116_endbr_sealing() {
    let Some(cache) = releases_6_12() else { return };
    let kernel = guest::release(&cache, "6.12.116+deb13").expect("release prepared");
    let work = guest::scratch("real-kernel-6.12-endbr");
    let c = work.join("endbr.c");
    std::fs::write(&c, ENDBR_C).unwrap();
    let exe = guest::build_program(&c, &work.join("endbr"));
    let mut initramfs = Initramfs::new();
    initramfs.program("/bin/endbr", &exe);
    let mut s = Script::new();
    s.step("endbr", "/bin/endbr cp_new_stat vfs_fstat fput");
    let b = boot(&kernel, "real-kernel-6.12-endbr", &mut initramfs, &s);
    let out = &b
        .expect(
            "endbr",
            0,
            &["cp_new_stat=none", "vfs_fstat=sealed", "fput=endbr"],
        )
        .output;
    let sealed: u64 = out
        .split_whitespace()
        .find_map(|w| w.strip_prefix("sealed="))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no count: {out}"));
    assert!(sealed > 1000, "{out}");
    let _ = std::fs::remove_dir_all(&work);
}
