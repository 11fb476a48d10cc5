# ruff: noqa: E501  (a data table: one answer kind per line reads better than wrapped)
"""The golden table of math answers: gold answers in the spellings competition-math files use (MATH-style LaTeX,
Minerva-style numbers and Python expressions, GSM8K integers), each with spellings that must score correct and
answers that must score wrong (fragments of the gold, near misses, other items' golds).

Rows are ``(kind, gold, equivalents, wrongs)``. Written for this project; every equivalence was worked by hand.
"""

from __future__ import annotations

GOLDEN: list[tuple[str, str, list[str], list[str]]] = [
    # integers and decimals
    ("integer", "5", ["5.0", "05", "+5", "\\text{5}", "5 apples"], ["6", "-5", "50", "0.5"]),
    ("integer", "-3", ["-3.0", "- 3", "(-3)"], ["3", "-4", "-30"]),
    ("integer", "0", ["0.0", "-0", "0.000"], ["1", "10", "0.1"]),
    ("integer", "1000", ["1,000", "1{,}000", "10^3", "1000.0"], ["100", "10000", "1,001"]),
    ("integer", "2024", ["2,024", "2024.00"], ["2023", "202", "24"]),
    ("integer", "17", ["17", "\\mathbf{17}", "34/2"], ["71", "1", "7"]),
    ("decimal", "0.5", [".5", "\\frac{1}{2}", "1/2", "0.50"], ["5", "0.05", "-0.5"]),
    ("decimal", "-3.5", ["-\\frac{7}{2}", "-7/2", "-3.50"], ["3.5", "-3", "-35"]),
    ("decimal", "1.3", ["1.30", "\\frac{13}{10}"], ["1.03", "13", "1.31"]),
    ("decimal", "9.6", ["9.60", "\\frac{48}{5}"], ["9.66", "96", "6"]),
    ("decimal", "0.125", ["\\frac{1}{8}", "1/8"], ["0.12", "125", "0.25"]),
    ("decimal", "2.718", ["2.7180"], ["2.71", "2718", "e"]),
    # fractions in every LaTeX spelling
    (
        "fraction",
        "\\frac{1}{2}",
        ["\\dfrac{1}{2}", "\\tfrac{1}{2}", "\\frac12", "1/2", "0.5", "\\frac{2}{4}"],
        ["2", "\\frac{1}{3}", "12"],
    ),
    ("fraction", "\\frac43", ["\\frac{4}{3}", "4/3", "\\dfrac{4}{3}", "1\\frac{1}{3}"], ["\\frac{3}{4}", "4", "43"]),
    ("fraction", "\\dfrac{17}{50}", ["\\frac{17}{50}", "0.34", "17/50"], ["\\frac{50}{17}", "17", "50", "1750"]),
    ("fraction", "\\frac 59", ["\\frac{5}{9}", "5/9", "\\dfrac59"], ["59", "\\frac{9}{5}", "5", "9"]),
    (
        "fraction",
        "-\\frac{3}{4}",
        ["\\frac{-3}{4}", "-0.75", "\\frac{3}{-4}", "-3/4"],
        ["\\frac{3}{4}", "0.75", "-3", "-4"],
    ),
    (
        "fraction",
        "\\frac{\\sqrt{3}}{2}",
        ["\\dfrac{\\sqrt3}{2}", "\\frac{1}{2}\\sqrt{3}", "\\sqrt{3}/2"],
        ["\\sqrt{3}", "\\frac{1}{2}", "3", "2"],
    ),
    ("fraction", "\\frac{1}{64}", ["1/64", "0.015625", "2^{-6}"], ["64", "\\frac{1}{46}", "1"]),
    ("fraction", "\\frac{7}{2}", ["3.5", "3\\frac{1}{2}", "7/2"], ["\\frac{2}{7}", "7", "2"]),
    # radicals and pi
    ("radical", "\\sqrt{51}", ["51^{1/2}", "\\sqrt{51}", "\\sqrt {51}"], ["51", "\\sqrt{15}", "7"]),
    (
        "radical",
        "3\\sqrt{13}",
        ["\\sqrt{117}", "3 \\sqrt{13}", "\\sqrt{13} \\cdot 3"],
        ["3", "13", "\\sqrt{13}", "3\\sqrt{31}"],
    ),
    ("radical", "2\\sqrt{2}", ["\\sqrt{8}", "2 \\sqrt 2", "\\sqrt{2} \\cdot 2"], ["2", "\\sqrt{2}", "4"]),
    ("radical", "\\sqrt[3]{2}", ["2^{1/3}", "2^{\\frac{1}{3}}"], ["\\sqrt{2}", "2", "3"]),
    (
        "radical",
        "5 + 2\\sqrt{6}",
        ["2\\sqrt{6} + 5", "5+\\sqrt{24}", "(\\sqrt{2}+\\sqrt{3})^2"],
        ["5", "2\\sqrt{6}", "6", "7\\sqrt{6}"],
    ),
    (
        "radical",
        "\\frac{3 + \\sqrt{5}}{2}",
        ["\\frac{3}{2} + \\frac{\\sqrt{5}}{2}", "(3+\\sqrt5)/2"],
        ["3+\\sqrt{5}", "\\frac{3}{2}", "5"],
    ),
    ("pi", "\\pi", ["\\pi", "1\\pi", "\\frac{2\\pi}{2}"], ["3.14", "3", "2\\pi", "\\frac{\\pi}{2}"]),
    ("pi", "4\\pi", ["4 \\pi", "\\pi \\cdot 4", "\\frac{8\\pi}{2}"], ["4", "\\pi", "8\\pi"]),
    (
        "pi",
        "\\frac{\\pi}{3}",
        ["\\frac{1}{3}\\pi", "\\pi/3", "\\dfrac{\\pi}{3}"],
        ["\\frac{\\pi}{6}", "3", "\\pi", "60"],
    ),
    ("pi", "36\\pi", ["36 \\pi", "\\pi \\cdot 36"], ["36", "6\\pi", "\\pi"]),
    ("pi", "\\frac{3\\pi}{4}", ["\\frac{3}{4}\\pi", "0.75\\pi"], ["\\frac{\\pi}{4}", "\\frac{3}{4}", "3\\pi"]),
    # complex numbers
    ("complex", "6 - 5i", ["6-5i", "6 - 5 i", "-5i + 6"], ["6+5i", "5", "6", "-5i", "6 - 5"]),
    ("complex", "1 + i", ["i + 1", "1+i"], ["1", "i", "1-i"]),
    ("complex", "-2i", ["-2 i", "0 - 2i"], ["2i", "-2", "2"]),
    ("complex", "3 + 4i", ["4i + 3", "3+4i"], ["3", "4", "3-4i", "4+3i"]),
    # scientific notation
    (
        "scientific",
        "4.5e33",
        ["4.5 \\times 10^{33}", "4.5\\times10^{33}", "4.5E33", "4.5e+33", "45 \\times 10^{32}"],
        ["4.5", "33", "4.5e32", "4.5 \\times 10^{3}"],
    ),
    (
        "scientific",
        "1e-8",
        ["10^{-8}", "1 \\times 10^{-8}", "0.00000001", "1.0e-08"],
        ["1", "8", "-8", "10^{8}", "1e-7"],
    ),
    (
        "scientific",
        "6.02 \\times 10^{23}",
        ["6.02e23", "6.02 \\cdot 10^{23}", "602 \\times 10^{21}"],
        ["6.02", "23", "6.02e22"],
    ),
    ("scientific", "3 \\times 10^{8}", ["3e8", "300000000", "3\\times 10^8"], ["3", "8", "3e9", "30"]),
    ("scientific", "2.5 \\times 10^{-3}", ["2.5e-3", "0.0025"], ["2.5", "-3", "0.025"]),
    ("scientific", "1.2e5", ["120000", "1.2 \\times 10^{5}", "120,000"], ["1.2", "5", "12000"]),
    # thousands separators
    ("thousands", "10,\\!080", ["10080", "10,080", "10{,}080", "10\\,080"], ["10", "80", "1008", "100800"]),
    ("thousands", "10,080", ["10080", "10,\\!080"], ["10", "80", "10081"]),
    ("thousands", "1,\\!000,\\!000", ["1000000", "1,000,000", "10^6"], ["1", "1000", "100000"]),
    ("thousands", "12,\\!345.67", ["12345.67"], ["12", "345.67", "12345.6"]),
    ("thousands", "2,500", ["2500", "2,500.00"], ["2", "500", "25"]),
    # currency and units
    ("currency", "\\$18.90", ["18.90", "18.9", "\\$18.9", "18.90 dollars"], ["18", "90", "1890", "18.09"]),
    ("currency", "\\$36", ["36", "\\$36.00", "36 dollars"], ["3.6", "63", "37"]),
    ("currency", "36", ["\\$36", "36.00", "\\$ 36"], ["35", "3"]),
    ("currency", "\\$5", ["5", "\\$5.00"], ["50", "0.5", "4"]),
    ("currency", "5", ["\\$5", "5\\text{ dollars}"], ["6", "55"]),
    ("units", "30\\text{ degrees}", ["30", "30^\\circ", "30^{\\circ}", "30 degrees"], ["3", "60", "300"]),
    ("units", "30^\\circ", ["30", "30\\text{ degrees}", "30^{\\circ}"], ["3", "60", "0"]),
    ("units", "12\\text{ cm}", ["12", "12 \\text{cm}", "12\\mbox{ cm}"], ["1", "2", "120"]),
    ("units", "4\\text{ inches}", ["4", "4 inches", "4 \\text{ in}"], ["14", "40"]),
    ("units", "75\\text{ mph}", ["75"], ["57", "7"]),
    ("units", "2\\text{ hours}", ["2", "2 hours"], ["20", "3"]),
    ("units", "147\\mbox{ inches}^2", ["147", "147\\text{ inches}^2", "147 square inches"], ["47", "1472", "14"]),
    ("fraction", "-1./3", ["-1/3", "-\\frac{1}{3}", "-\\frac13"], ["1/3", "-3", "-1"]),
    # percentages
    ("percent", "25\\%", ["25", "0.25", "25 \\%", "\\frac{1}{4}"], ["2.5", "75", "250"]),
    ("percent", "40\\%", ["40", "0.4", "40 percent"], ["4", "60", "0.04"]),
    ("percent", "12.5\\%", ["12.5", "0.125", "\\frac{1}{8}"], ["125", "12", "1.25"]),
    # mixed numbers
    (
        "mixed",
        "1\\frac{4}{5}",
        ["\\frac{9}{5}", "1.8", "9/5", "1 \\frac{4}{5}"],
        ["\\frac{4}{5}", "1", "4", "5", "\\frac{14}{5}"],
    ),
    ("mixed", "2\\frac{1}{3}", ["\\frac{7}{3}", "7/3"], ["\\frac{1}{3}", "2", "\\frac{2}{3}"]),
    ("mixed", "3\\frac{3}{4}", ["\\frac{15}{4}", "3.75"], ["\\frac{3}{4}", "3", "4"]),
    # plus-minus and comma lists
    (
        "pm",
        "1 \\pm \\sqrt{2}",
        ["1 + \\sqrt{2}, 1 - \\sqrt{2}", "1-\\sqrt2, 1+\\sqrt2"],
        ["1 + \\sqrt{2}", "1", "\\sqrt{2}"],
    ),
    ("pm", "\\pm 3", ["3, -3", "-3, 3", "\\pm3"], ["3", "-3", "9"]),
    ("list", "1, 2, 3", ["3, 2, 1", "1,2,3", "\\{1, 2, 3\\}"], ["1, 2", "1", "3", "1, 2, 4"]),
    ("list", "-2, 5", ["5, -2", "-2,5"], ["2, 5", "-2", "5"]),
    ("list", "0, 1", ["1, 0"], ["0", "1", "0, 1, 2"]),
    ("list", "2, -3", ["-3, 2", "\\{-3, 2\\}"], ["2", "-3", "3, -2"]),
    # tuples and ordered pairs
    ("tuple", "(6,31,-1)", ["(6, 31, -1)", "\\left(6,31,-1\\right)"], ["(6,31,1)", "(6,31)", "6", "-1", "(-1,31,6)"]),
    ("tuple", "(3, 4)", ["(3,4)", "\\left( 3, 4 \\right)"], ["(4, 3)", "3", "4", "(3, 5)"]),
    ("tuple", "(-1, 2)", ["(-1,2)"], ["(1, 2)", "(2, -1)", "2", "-1"]),
    (
        "tuple",
        "\\left( 3, \\frac{\\pi}{2} \\right)",
        ["(3, \\frac{\\pi}{2})", "(3, \\pi/2)"],
        ["(3, \\pi)", "3", "(\\frac{\\pi}{2}, 3)"],
    ),
    ("tuple", "(0, 0, 1)", ["(0,0,1)"], ["(0, 1, 0)", "1", "(0, 0)"]),
    # intervals and unions
    (
        "interval",
        "(2,\\infty)",
        ["(2, \\infty)", "\\left(2, \\infty\\right)"],
        ["[2, \\infty)", "2", "(2, 3)", "(-\\infty, 2)"],
    ),
    ("interval", "[-2, 7]", ["[-2,7]", "\\left[-2, 7\\right]"], ["(-2, 7)", "[-2, 7)", "7", "-2"]),
    ("interval", "x \\in [-2,7]", ["[-2,7]", "x \\in [-2, 7]"], ["(-2,7)", "[2, 7]", "7"]),
    (
        "interval",
        "(-\\infty, 0) \\cup (1, \\infty)",
        ["(-\\infty,0)\\cup(1,\\infty)"],
        ["(-\\infty, 0)", "(1, \\infty)", "(0, 1)", "1"],
    ),
    (
        "interval",
        "(-\\infty, -3] \\cup [3, \\infty)",
        ["(-\\infty,-3]\\cup[3,\\infty)"],
        ["(-\\infty, -3) \\cup (3, \\infty)", "3", "[-3, 3]"],
    ),
    ("interval", "[0, 1)", ["[0,1)"], ["[0, 1]", "(0, 1)", "1", "0"]),
    # sets
    ("set", "\\{1, 2, 3\\}", ["\\{3, 2, 1\\}", "1, 2, 3"], ["\\{1, 2\\}", "\\{1, 2, 4\\}", "3"]),
    ("set", "\\{-1, 4\\}", ["\\{4, -1\\}", "-1, 4"], ["\\{1, 4\\}", "4", "-1"]),
    ("set", "E_{1},E_{2}", ["E_1, E_2", "E_{2},E_{1}"], ["E_{1}", "E_{1},E_{3}"]),
    # vectors and matrices
    (
        "matrix",
        "\\begin{pmatrix} -7 \\\\ 16 \\\\ 5 \\end{pmatrix}",
        ["\\begin{pmatrix}-7\\\\16\\\\5\\end{pmatrix}", "\\begin{bmatrix} -7 \\\\ 16 \\\\ 5 \\end{bmatrix}"],
        [
            "5",
            "-7",
            "16",
            "\\begin{pmatrix} -7 \\\\ 16 \\\\ 6 \\end{pmatrix}",
            "\\begin{pmatrix} 7 \\\\ 16 \\\\ 5 \\end{pmatrix}",
        ],
    ),
    (
        "matrix",
        "\\begin{pmatrix} 1 & 2 \\\\ 3 & 4 \\end{pmatrix}",
        ["\\begin{pmatrix}1&2\\\\3&4\\end{pmatrix}", "\\begin{bmatrix} 1 & 2 \\\\ 3 & 4 \\end{bmatrix}"],
        ["\\begin{pmatrix} 1 & 3 \\\\ 2 & 4 \\end{pmatrix}", "4", "1"],
    ),
    (
        "matrix",
        "\\begin{pmatrix} 0 \\\\ 0 \\end{pmatrix}",
        ["\\begin{pmatrix}0\\\\0\\end{pmatrix}"],
        ["\\begin{pmatrix} 0 \\\\ 1 \\end{pmatrix}", "0", "1"],
    ),
    (
        "matrix",
        "\\begin{pmatrix} 1/3 \\\\ -2/3 \\end{pmatrix}",
        ["\\begin{pmatrix} \\frac{1}{3} \\\\ -\\frac{2}{3} \\end{pmatrix}"],
        ["\\begin{pmatrix} 1/3 \\\\ 2/3 \\end{pmatrix}", "3", "-2/3"],
    ),
    # equations and polynomials
    ("equation", "y = 2x + 3", ["y=2x+3", "2x + 3", "y = 3 + 2x"], ["3", "2", "y = 2x - 3", "y = 3x + 2"]),
    ("equation", "x = 5", ["5", "x=5"], ["-5", "x = 6", "y = 5"]),
    (
        "equation",
        "y = -\\frac{1}{2}x + 4",
        ["y=-x/2+4", "-\\frac{x}{2}+4"],
        ["4", "y = \\frac{1}{2}x + 4", "-\\frac{1}{2}"],
    ),
    (
        "polynomial",
        "x^5 - x^4 + x^3 - x^2 + x - 1",
        ["x^5-x^4+x^3-x^2+x-1", "-1 + x - x^2 + x^3 - x^4 + x^5"],
        ["1", "x^5", "x^5 - x^4 + x^3 - x^2 + x + 1", "-1"],
    ),
    (
        "polynomial",
        "x^2 + 7x + 10",
        ["(x+2)(x+5)", "x^2+7x+10", "10 + 7x + x^2"],
        ["x^2 + 7x", "10", "(x+2)(x+4)", "7"],
    ),
    ("polynomial", "p - q", ["p-q", "-q + p"], ["q - p", "p", "q", "p + q"]),
    ("polynomial", "2a + 3b", ["3b + 2a", "2a+3b"], ["2a", "3b", "5ab", "2"]),
    ("polynomial", "3x^2 - 2x + 1", ["1 - 2x + 3x^2"], ["3x^2", "1", "3x^2 + 2x + 1"]),
    ("polynomial", "\\frac{x+1}{x-1}", ["(x+1)/(x-1)"], ["x+1", "x-1", "1"]),
    # functions and Python expressions (Minerva-style golds)
    (
        "function",
        "np.arcsin(10/13)",
        ["\\arcsin(10/13)", "\\arcsin\\left(\\frac{10}{13}\\right)", "\\sin^{-1}(10/13)"],
        ["10/13", "13", "\\arccos(10/13)", "10"],
    ),
    ("function", "\\log_2 5", ["\\log_{2} 5", "\\log_2{5}"], ["5", "2", "\\log_2 3", "\\log_5 2"]),
    ("function", "\\ln 2", ["\\ln(2)", "\\ln{2}"], ["2", "\\ln 3"]),
    ("function", "e^{2}", ["e^2", "\\exp(2)"], ["2", "e", "2e"]),
    ("python", "2**10", ["1024", "2^{10}", "2^10"], ["20", "2", "10", "2^{11}"]),
    ("python", "sqrt(2)/2", ["\\frac{\\sqrt{2}}{2}", "\\frac{1}{\\sqrt{2}}"], ["\\sqrt{2}", "2", "\\frac{1}{2}"]),
    ("python", "np.pi/4", ["\\frac{\\pi}{4}", "\\pi/4", "0.25\\pi"], ["\\pi", "4", "\\frac{\\pi}{2}"]),
    ("python", "3*10**8", ["3 \\times 10^{8}", "300000000", "3e8"], ["3", "8", "3 \\times 10^{9}"]),
    # text answers
    (
        "text",
        "\\text{Evelyn}",
        ["Evelyn", "\\text{evelyn}", "\\textbf{Evelyn}", "\\mbox{Evelyn}"],
        ["Evenly", "Eve", "\\text{Emily}"],
    ),
    ("text", "Evelyn", ["\\text{Evelyn}", "evelyn"], ["Evenly", "Lynn"]),
    ("text", "\\text{odd}", ["odd", "\\text{ odd }", "\\text{Odd}"], ["\\text{even}", "even", "do"]),
    ("text", "\\text{Tuesday}", ["Tuesday", "\\text{tuesday}"], ["Thursday", "\\text{Monday}"]),
    ("text", "\\text{no solution}", ["no solution", "\\text{No solution}"], ["\\text{one solution}", "0"]),
    # multiple-choice letters
    ("letter", "C", ["(C)", "\\text{(C)}", "\\text{C}", "\\textbf{(C)}", "c"], ["D", "(A)", "\\text{B}"]),
    ("letter", "(C)", ["C", "\\text{(C)}", "\\text{C}"], ["(D)", "B"]),
    ("letter", "\\text{(B)}", ["B", "(B)", "\\textbf{(B)}"], ["C", "(A)"]),
    ("letter", "A", ["(A)", "\\text{A}"], ["B", "E"]),
    ("letter", "E", ["(E)", "\\text{(E)}"], ["D", "F"]),
]

# Output forms a model writes its final answer in; %s is the answer.
OUTPUT_FORMS = [
    "The total is computed above.\n\\boxed{%s}",
    "Step 1: work.\n#### %s",
    "$%s$",
    "So the result follows. The final answer is $%s$.",
    "Final Answer: The final answer is $%s$. I hope it is correct.",
    "Therefore, the answer is $\\boxed{%s}$.",
]
