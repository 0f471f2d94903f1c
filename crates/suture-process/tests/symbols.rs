//! Symbol resolution against a live process: a PIE whose two units each have a static `count`
//! prints the addresses it sees; the resolver must find the same ones from the ELF file and
//! /proc/PID/maps alone.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use suture_process::ids::RemoteAddr;
use suture_process::link::{Request, Resolver, Value};
use suture_process::symbols::{ElfSymbols, Mapped, TargetResolver};
use suture_testkit::cc::gcc;
use suture_testkit::{KillOnDrop, Scratch};

const A: &str = r#"
#include <stdio.h>
#include <unistd.h>
static int count = 1;
__thread int tls_var = 7;
int global_var = 3;
void *b_count(void);
int main(void) {
    printf("%p %p %p %p\n", (void *)&count, b_count(), (void *)&global_var, (void *)&tls_var);
    unsigned long tp;
    __asm__("mov %%fs:0, %0" : "=r"(tp));
    printf("%lx\n", tp);
    fflush(stdout);
    pause();
    return count;
}
"#;
const B: &str = "static int count = 2;\nvoid *b_count(void) { return &count; }\n";

#[test]
fn resolves_statics_globals_and_tls_like_the_process_sees_them() {
    let dir = Scratch::new(env!("CARGO_TARGET_TMPDIR"), "symbols", "resolve");
    std::fs::write(dir.join("a.c"), A).unwrap();
    std::fs::write(dir.join("b.c"), B).unwrap();
    gcc(&dir, &["-O1", "-fPIE", "-pie", "a.c", "b.c", "-o", "prog"]);
    let exe = dir.join("prog");
    let mut child = KillOnDrop(Command::new(&exe).stdout(Stdio::piped()).spawn().unwrap());
    let mut out = BufReader::new(child.0.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    let seen: Vec<u64> = line
        .split_whitespace()
        .map(|p| u64::from_str_radix(p.trim_start_matches("0x"), 16).unwrap())
        .collect();
    line.clear();
    out.read_line(&mut line).unwrap();
    let tp = u64::from_str_radix(line.trim(), 16).unwrap();

    // The mapping of file offset 0 of the executable gives its load address.
    let maps = std::fs::read_to_string(format!("/proc/{}/maps", child.0.id())).unwrap();
    let exe_path = std::fs::canonicalize(&exe).unwrap();
    let start = maps
        .lines()
        .find(|l| {
            l.ends_with(exe_path.to_str().unwrap())
                && l.split_whitespace().nth(2) == Some("00000000")
        })
        .map(|l| u64::from_str_radix(l.split('-').next().unwrap(), 16).unwrap())
        .expect("executable mapped");

    let symbols = ElfSymbols::parse("prog", &std::fs::read(&exe).unwrap()).unwrap();
    assert!(symbols.build_id.is_some(), "gcc on Debian adds a build-id");
    let bias = symbols.bias(RemoteAddr(start));
    let m = Mapped {
        path: "prog".into(),
        symbols,
        bias,
        is_exec: true,
    };
    let r = TargetResolver {
        patched: &m,
        search: vec![&m],
    };
    let local = |file: &str| {
        r.resolve(&Request::Local {
            file: file.into(),
            name: "count".into(),
        })
    };
    assert_eq!(local("a.c"), Ok(Value::Address(RemoteAddr(seen[0]))));
    assert_eq!(local("b.c"), Ok(Value::Address(RemoteAddr(seen[1]))));
    assert!(
        local("c.c").is_err(),
        "two statics named count and none in c.c: ambiguous"
    );
    let global = r.resolve(&Request::Global {
        name: "global_var".into(),
        weak: false,
    });
    assert_eq!(global, Ok(Value::Address(RemoteAddr(seen[2]))));
    match r.resolve(&Request::Global {
        name: "tls_var".into(),
        weak: false,
    }) {
        Ok(Value::TlsOffset(off)) => assert_eq!(tp.wrapping_add(off as u64), seen[3]),
        other => panic!("tls_var: {other:?}"),
    }
    assert_eq!(
        r.resolve(&Request::Global {
            name: "no_such_symbol".into(),
            weak: true
        }),
        Ok(Value::Absent)
    );
    assert!(r
        .resolve(&Request::Global {
            name: "no_such_symbol".into(),
            weak: false
        })
        .is_err());
}
