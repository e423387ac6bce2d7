//! Hadamard matrices from first principles: square `±1` matrices `H` of order `m` with
//! `H Hᵀ = m I`.
//!
//! * **Sylvester** (`m = 2^k`): `H_1 = [1]`, `H_2m = [[H, H], [H, −H]]`, i.e.
//!   `H[i][j] = (−1)^popcount(i & j)`. The fast Walsh–Hadamard transform applies it.
//! * **Paley I** (`m = q + 1`, `q` a prime `≡ 3 (mod 4)`): with the Jacobsthal matrix
//!   `Q[i][j] = χ(j − i)` (`χ` the quadratic character mod `q`: 0 at 0, +1 on non-zero squares,
//!   −1 otherwise), `Q` is skew-symmetric with `Q Qᵀ = qI − J` and zero row sums, and
//!   `H = [[1, 1ᵀ], [−1, Q + I]]` is Hadamard. Orders 12 (q = 11), 20 (q = 19), 60 (q = 59).
//! * **Paley II** (`m = 2(q + 1)`, `q` a prime `≡ 1 (mod 4)`): `Q` is symmetric and
//!   `C = [[0, 1ᵀ], [1, Q]]` is a symmetric conference matrix (`C Cᵀ = qI`); replacing every
//!   `0` by `[[1, −1], [−1, −1]]` and every `±1` by `±[[1, 1], [1, −1]]` gives a Hadamard matrix.
//!   Order 36 (q = 17).
//!
//! Matrices are returned row-major as `i8` entries `±1`.

/// Whether `q` is prime (trial division; orders here are small).
fn is_prime(q: usize) -> bool {
    q >= 2 && (2..).take_while(|d| d * d <= q).all(|d| !q.is_multiple_of(d))
}

/// The quadratic character of every residue mod prime `q`.
fn quadratic_character(q: usize) -> Vec<i8> {
    let mut chi = vec![-1i8; q];
    chi[0] = 0;
    for x in 1..q {
        chi[x * x % q] = 1;
    }
    chi
}

/// `Q[i][j] = χ(j − i)`, `q × q`.
fn jacobsthal(q: usize) -> Vec<i8> {
    let chi = quadratic_character(q);
    (0..q * q).map(|k| chi[(k % q + q - k / q) % q]).collect()
}

/// Sylvester's matrix of order `m` (a power of two).
pub fn sylvester(m: usize) -> Vec<i8> {
    debug_assert!(m.is_power_of_two());
    (0..m * m).map(|k| if ((k / m) & (k % m)).count_ones().is_multiple_of(2) { 1 } else { -1 }).collect()
}

/// Paley's first construction, order `q + 1` (`q` prime, `q ≡ 3 mod 4`).
fn paley_i(q: usize) -> Vec<i8> {
    let n = q + 1;
    let jac = jacobsthal(q);
    let mut h = vec![0i8; n * n];
    for i in 0..n {
        for j in 0..n {
            h[i * n + j] = match (i, j) {
                (0, _) => 1,
                (_, 0) => -1,
                (i, j) if i == j => 1,
                (i, j) => jac[(i - 1) * q + (j - 1)],
            };
        }
    }
    h
}

/// Paley's second construction, order `2(q + 1)` (`q` prime, `q ≡ 1 mod 4`).
fn paley_ii(q: usize) -> Vec<i8> {
    let c_n = q + 1;
    let jac = jacobsthal(q);
    let conference = |i: usize, j: usize| -> i8 {
        match (i, j) {
            (0, 0) => 0,
            (0, _) | (_, 0) => 1,
            (i, j) => jac[(i - 1) * q + (j - 1)],
        }
    };
    let n = 2 * c_n;
    let mut h = vec![0i8; n * n];
    for i in 0..c_n {
        for j in 0..c_n {
            let c = conference(i, j);
            let block: [[i8; 2]; 2] = if c == 0 { [[1, -1], [-1, -1]] } else { [[c, c], [c, -c]] };
            for (a, row) in block.iter().enumerate() {
                for (b, &v) in row.iter().enumerate() {
                    h[(2 * i + a) * n + 2 * j + b] = v;
                }
            }
        }
    }
    h
}

/// A Hadamard matrix of order `m` from the constructions above, or `None` when none of them
/// gives one (Sylvester for powers of two, then Paley I, then Paley II).
pub fn hadamard(m: usize) -> Option<Vec<i8>> {
    if m.is_power_of_two() {
        return Some(sylvester(m));
    }
    if !m.is_multiple_of(4) {
        return None;
    }
    if is_prime(m - 1) && (m - 1) % 4 == 3 {
        return Some(paley_i(m - 1));
    }
    let q = m / 2 - 1;
    if is_prime(q) && q % 4 == 1 {
        return Some(paley_ii(q));
    }
    None
}
