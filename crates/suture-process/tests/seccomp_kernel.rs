//! suture's seccomp interpreter against the kernel: thousands of random classic-BPF filters
//! (within what the seccomp loader accepts) are loaded for real by a probe program
//! (`tests/fixtures/seccomp-probe/probe.c`), which makes a harmless system call under each;
//! what the kernel did (allowed, failed with errno E, killed by SIGSYS) must be exactly what
//! `suture_process::seccomp::run` predicts for the same `seccomp_data`.

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};

use suture_process::seccomp::{op::*, run, Action, Injected, Insn};

const ALLOW: u32 = 0x7fff_0000;

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn pick<T: Copy>(&mut self, v: &[T]) -> T {
        v[self.below(v.len() as u64) as usize]
    }
    /// Constants that make comparisons interesting: the call's numbers, bits, extremes.
    fn constant(&mut self) -> u32 {
        match self.below(4) {
            0 => self.pick(&[0, 1, 2, 4, 5, 7, 31, 32, 39, 110, 0xc000_003e, u32::MAX]),
            1 => self.below(64) as u32,
            2 => 1 << self.below(32),
            _ => self.next() as u32,
        }
    }
}

/// A random program the seccomp loader accepts: loads from `seccomp_data` (never the
/// instruction pointer, which is the probe's own), ALU, scratch memory written before any
/// jump, forward jumps, returns of every action (and of the accumulator).
fn program(rng: &mut Rng) -> Vec<Insn> {
    let len = 2 + rng.below(24) as usize;
    let mut body = Vec::with_capacity(len);
    let mut stored = [false; 16];
    let mut jumped = false;
    let ret_k = |rng: &mut Rng| {
        let errno = 1 + rng.below(200) as u32;
        rng.pick(&[
            ALLOW,
            0x0005_0000 | if errno == 38 { 1 } else { errno }, // ERRNO (never ENOSYS)
            0x0005_0000,                                       // ERRNO with data 0
            0x0005_ffff,                                       // data above MAX_ERRNO
            0x8000_0000,                                       // KILL_PROCESS
            0,                                                 // KILL_THREAD
            0x0003_0000,                                       // TRAP
            0x7ffc_0000,                                       // LOG
            0x7ff0_0000,                                       // TRACE (no tracer: ENOSYS)
            0x1234_0000,                                       // unknown: kill
        ])
    };
    for i in 0..len - 1 {
        let after = (len - 1 - i) as u32; // instructions after this one
        let insn = match rng.below(12) {
            0..=2 => {
                let off = rng.pick(&[0u32, 4, 16, 20, 24, 28, 32, 36, 40, 44, 48, 52, 56, 60]);
                Insn::new(LD | W | ABS, 0, 0, off)
            }
            3 => Insn::new(
                rng.pick(&[LD | W | IMM, LDX | W | IMM]),
                0,
                0,
                rng.constant(),
            ),
            4 | 5 => {
                let alu = rng.pick(&[ADD, SUB, MUL, DIV, OR, AND, LSH, RSH, XOR, NEG]);
                if alu == NEG {
                    Insn::new(ALU | NEG, 0, 0, 0)
                } else if rng.below(2) == 0 {
                    Insn::new(ALU | alu | X, 0, 0, 0)
                } else {
                    let k = match alu {
                        DIV => 1 + rng.below(9) as u32,
                        LSH | RSH => rng.below(32) as u32,
                        _ => rng.constant(),
                    };
                    Insn::new(ALU | alu | K, 0, 0, k)
                }
            }
            6 => Insn::new(MISC | rng.pick(&[TAX, TXA]), 0, 0, 0),
            7 => {
                let slot = rng.below(16) as usize;
                if !jumped {
                    stored[slot] = true;
                }
                Insn::new(rng.pick(&[ST, STX]), 0, 0, slot as u32)
            }
            8 => match (0..16).filter(|&s| stored[s]).collect::<Vec<_>>() {
                v if !v.is_empty() => {
                    let slot = rng.pick(&v) as u32;
                    Insn::new(rng.pick(&[LD | W | MEM, LDX | W | MEM]), 0, 0, slot)
                }
                _ => Insn::new(rng.pick(&[LD | W | LEN, LDX | W | LEN]), 0, 0, 0),
            },
            9 | 10 => {
                jumped = true;
                let cond = rng.pick(&[JEQ, JGT, JGE, JSET]);
                let src = rng.pick(&[K, X]);
                let jt = rng.below(u64::from(after)) as u8;
                let jf = rng.below(u64::from(after)) as u8;
                Insn::new(JMP | cond | src, jt, jf, rng.constant())
            }
            _ if rng.below(3) == 0 => {
                jumped = true;
                Insn::new(JMP | JA, 0, 0, rng.below(u64::from(after)) as u32)
            }
            _ => {
                if rng.below(2) == 0 {
                    Insn::new(RET | A, 0, 0, 0)
                } else {
                    Insn::new(RET | K, 0, 0, ret_k(rng))
                }
            }
        };
        body.push(insn);
    }
    body.push(Insn::new(RET | K, 0, 0, ret_k(rng)));
    with_prefix(body)
}

/// The probe needs its own write and exit: only getpid (39) and getppid (110) reach `body`
/// (relative jumps keep their meaning after the prefix).
fn with_prefix(body: Vec<Insn>) -> Vec<Insn> {
    let mut prog = vec![
        Insn::new(LD | W | ABS, 0, 0, 0),
        Insn::new(JMP | JEQ | K, 2, 0, 39),
        Insn::new(JMP | JEQ | K, 1, 0, 110),
        Insn::new(RET | K, 0, 0, ALLOW),
    ];
    prog.extend(body);
    prog
}

/// Cases whose outcome depends on corner semantics random programs rarely reach: shifts by
/// `X` of 32 or more use its low 5 bits, division by a zero `X` returns 0 (kill).
fn directed() -> Vec<Vec<Insn>> {
    let shift = |op: u16, a: u32, x: u32| {
        with_prefix(vec![
            Insn::new(LDX | W | IMM, 0, 0, x),
            Insn::new(LD | W | IMM, 0, 0, a),
            Insn::new(ALU | op | X, 0, 0, 0),
            Insn::new(RET | A, 0, 0, 0),
        ])
    };
    vec![
        shift(RSH, 0x000a_000a, 33), // ERRNO 5 when masked, 0 (kill) when not
        shift(LSH, 0x0002_8002, 33), // ERRNO 4 when masked
        shift(RSH, 0x000a_000a, 0xffff_ffe1),
        shift(DIV, 0x000a_000a, 0), // kill
        shift(DIV, 0x000a_000a, 2), // ERRNO 5
    ]
}

/// What the kernel must do, by suture's interpreter: the probe's line without its value
/// for calls that ran.
fn predicted(prog: &[Insn], call: &Injected) -> String {
    let ret = match run(prog, &call.data()) {
        Ok(r) => r,
        Err(e) => return format!("interpreter error: {e}"),
    };
    match Action::from_ret(ret) {
        Action::Allow | Action::Log => "ret".into(),
        Action::Errno(0) => "ret 0".into(),
        Action::Errno(e) => format!("errno {}", e.min(4095)),
        Action::Trace(_) | Action::UserNotif => "errno 38".into(),
        Action::KillProcess | Action::KillThread | Action::Trap(_) => "signal 31".into(),
    }
}

#[test]
fn the_interpreter_agrees_with_the_kernel_on_random_filters() {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("seccomp-kernel-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let probe = dir.join("probe");
    let src = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/seccomp-probe/probe.c"
    );
    let st = Command::new("gcc")
        .args(["-O2", "-Wall", "-o"])
        .arg(&probe)
        .arg(src)
        .status()
        .expect("gcc runs");
    assert!(st.success());

    let mut rng = Rng(0x5eed_cafe_f00d_1234);
    let cases: Vec<(Vec<Insn>, Injected)> = directed()
        .into_iter()
        .map(|p| (p, Injected::new("probe", 39, [0; 6], 0)))
        .chain((0..2000).map(|_| {
            let prog = program(&mut rng);
            let nr = rng.pick(&[39u32, 110]);
            let args: [u64; 6] = std::array::from_fn(|_| match rng.below(3) {
                0 => u64::from(rng.constant()),
                1 => u64::from(rng.constant()) << 32 | u64::from(rng.constant()),
                _ => rng.below(8),
            });
            (prog, Injected::new("probe", nr, args, 0))
        }))
        .collect();
    let mut input = String::new();
    for (prog, call) in &cases {
        input += &prog.len().to_string();
        for i in prog {
            input += &format!(" {} {} {} {}", i.code, i.jt, i.jf, i.k);
        }
        input += &format!(" {}", call.nr);
        for a in call.args {
            input += &format!(" {a}");
        }
        input.push('\n');
    }
    let mut child = Command::new(&probe)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || stdin.write_all(input.as_bytes()));
    let lines: Vec<String> = BufReader::new(child.stdout.take().unwrap())
        .lines()
        .map(Result::unwrap)
        .collect();
    writer.join().unwrap().unwrap();
    assert!(child.wait().unwrap().success());
    assert_eq!(lines.len(), cases.len());

    let directed_results: Vec<&str> = lines[..5].iter().map(String::as_str).collect();
    assert_eq!(
        directed_results,
        ["errno 5", "errno 4", "errno 5", "signal 31", "errno 5"]
    );
    let mut rejected = 0;
    let mut kinds = std::collections::BTreeMap::<String, usize>::new();
    for ((prog, call), got) in cases.iter().zip(&lines) {
        if got == "rejected" {
            rejected += 1;
            continue;
        }
        let want = predicted(prog, call);
        let agrees = if want == "ret" {
            got.strip_prefix("ret ")
                .and_then(|v| v.parse::<i64>().ok())
                .is_some_and(|v| v > 0)
        } else {
            *got == want
        };
        assert!(
            agrees,
            "kernel: {got}, interpreter: {want}\nprogram: {prog:?}\ncall: {call:?}"
        );
        *kinds
            .entry(want.split(' ').next().unwrap().to_string())
            .or_default() += 1;
    }
    // The generator stays within what the kernel loads, and covers every outcome.
    assert!(rejected < cases.len() / 50, "{rejected} programs rejected");
    for kind in ["ret", "errno", "signal"] {
        assert!(kinds.get(kind).copied().unwrap_or(0) > 50, "{kinds:?}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
