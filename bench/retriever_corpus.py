"""A small labelled retrieval set written for genstack's retriever benchmark.

52 short documents (plain text and Markdown) on unrelated everyday, technical and fictional topics,
with near neighbours on purpose (three coffee methods, three bicycle repairs, five company policies,
two router and two vacuum models, three tax forms), and 61 queries, each labelled with the document
that answers it. The queries mix paraphrases that share few words with their answer (where
embeddings should help) with identifiers, codes and rare names (where BM25 should help)."""

from __future__ import annotations

DOCUMENTS: dict[str, str] = {
    "espresso": """# Pulling an espresso shot

Espresso is brewed by forcing water at about 93 degrees through a compact puck of finely ground coffee
at roughly 9 bar of pressure. A typical double shot uses an 18 gram dose and yields about 36 grams of
liquid in 25 to 30 seconds. If the shot runs faster, grind finer; if it chokes the machine, grind coarser.
A good shot is topped by a layer of golden crema.""",
    "cold_brew": """Cold brew is coffee made by steeping coarsely ground beans in cold or room-temperature water for
12 to 24 hours, then filtering out the grounds. Because no heat is used, fewer acids and bitter compounds
dissolve, so the concentrate tastes smooth and sweet. Dilute it one to one with water or milk and keep
it in the fridge for up to two weeks.""",
    "bike_chain": """# Chain care

A dirty chain wears the cassette and chainrings and makes a grinding, squeaking noise. Wipe the chain,
scrub it with a degreaser and a brush, rinse and let it dry. Then put one drop of lubricant on each roller,
spin the cranks and wipe off the excess. Measure wear with a chain checker tool: replace the chain once it
has stretched by 0.5 percent on 11- and 12-speed drivetrains.""",
    "bike_puncture": """Fixing a flat tyre on the road: remove the wheel, use two tyre levers to unseat one side of the
tyre and pull out the inner tube. Pump a little air into the tube and find the hole by listening or by
submerging it in water and watching for bubbles. Roughen the area, apply vulcanising solution, wait a minute
and press on a patch. Check the inside of the tyre for the thorn or glass that caused it before refitting.""",
    "sourdough": """# Sourdough basics

## Starter
A starter is a culture of wild yeast and lactic acid bacteria. Feed it equal weights of flour and water
once or twice a day; it is ready when it doubles within six hours of a feed.

## Bulk fermentation
Mix the levain with flour, water and salt, then give the dough four sets of stretch and folds during
a bulk fermentation of four to six hours at room temperature.""",
    "houseplant_overwatering": """Yellowing lower leaves, a soggy smell and soil that never dries out are the
classic signs that a potted plant is being overwatered. Constantly wet soil starves roots of oxygen and leads
to root rot. Only water when the top few centimetres of soil are dry, use pots with drainage holes and empty
the saucer after watering.""",
    "tomato_blight": """Early blight on tomatoes is caused by the fungus Alternaria solani. It shows up as brown spots
with concentric rings, like a target, on the oldest leaves first, which then yellow and drop. Remove affected
lower leaves, water at the base instead of over the foliage, mulch the soil and rotate crops each year. A copper
fungicide can slow the spread in wet summers.""",
    "solar_panels": """Photovoltaic solar panels turn sunlight directly into direct current electricity. An inverter
converts it to alternating current for the household. With net metering, surplus power that the house does not
use is exported to the grid and credited against later consumption. Panels facing south at a tilt close to the
local latitude produce the most energy over a year.""",
    "heat_pump": """A heat pump does not burn fuel; it moves heat from the outside air or ground into the house using a
refrigerant cycle of evaporation and compression. For every kilowatt-hour of electricity it delivers three to four
kilowatt-hours of heat, a coefficient of performance of 3 to 4. Modern cold-climate air-source models keep heating
homes at outdoor temperatures down to minus 25 degrees Celsius, with lower efficiency.""",
    "python_keyerror": """In Python, reading d[key] raises KeyError when the dictionary has no such key. Check
membership first with `if key in d`, use `d.get(key, default)` to fall back to a default value, or use
collections.defaultdict when missing keys should be created on first access. The traceback shows the missing
key as the exception's argument.""",
    "python_venv": """A virtual environment keeps each project's dependencies separate from the system Python and from
other projects. Create one with `python -m venv .venv`, activate it with `source .venv/bin/activate`, and
everything pip installs afterwards goes into that folder. Record exact versions in a requirements file so
that the environment can be rebuilt on another machine.""",
    "git_rebase": """# Squashing commits

Use an interactive rebase to combine several small commits into one before merging a feature branch:
`git rebase -i HEAD~3` opens an editor listing the last three commits; change `pick` to `squash` on the ones
to fold into the commit above. Never rebase commits that others have already pulled, because rebasing
rewrites history.""",
    "docker_layers": (
        """Every instruction in a Dockerfile creates an image layer, and Docker reuses cached layers as long
as nothing before them changed. Copy the dependency manifest and install dependencies before copying the
application source, so that editing code does not invalidate the slow install step. A .dockerignore file
keeps build contexts small and avoids cache busting by unrelated files."""
    ),
    "http_429": """HTTP status 429 Too Many Requests means the client exceeded a rate limit. Servers often include a
Retry-After header giving the number of seconds to wait. Clients should back off exponentially with jitter,
cap the number of retries and spread requests out instead of hammering the endpoint again immediately.""",
    "tls_certificates": """A TLS certificate binds a domain name to a public key and is signed by a certificate
authority; browsers verify the whole chain up to a trusted root. Certificates expire, and an expired one breaks
HTTPS for every visitor. Let's Encrypt issues free certificates that are valid for 90 days, so they are renewed
automatically, usually every 60 days, by an ACME client such as certbot.""",
    "sleep_hygiene": """To fall asleep more easily, go to bed and get up at the same time every day, including weekends.
Keep the bedroom cool, dark and quiet, stop using phones and laptops an hour before bed, and avoid caffeine after
early afternoon. If you cannot sleep after twenty minutes, get up and do something calm until you feel drowsy.""",
    "marathon_training": """Marathon training plans build the weekly long run gradually to about 32 kilometres. Most
runs should be easy, conversational efforts, with only a fifth at high intensity. In the last three weeks
before the race, taper: cut weekly mileage by about a third each week while keeping some short fast sessions,
so the legs arrive fresh on race day.""",
    "first_aid_burns": """For a minor burn or scald, cool the area under cool running water for twenty minutes as soon
as possible. Remove rings and watches before swelling starts. Do not use ice, butter or creams. Cover the burn
loosely with cling film or a clean plastic bag, and seek medical help for burns larger than the casualty's hand,
on the face or hands, or that look white or charred.""",
    "volcano": """Volcanoes form where magma rises through the crust. Stratovolcanoes such as Mount Fuji are steep cones
built from layers of lava and ash, and their sticky magma traps gas, which makes eruptions explosive. Pyroclastic
flows, avalanches of hot gas and rock, are the deadliest hazard, which is why authorities declare exclusion zones.""",
    "tides": (
        """Tides are the regular rise and fall of the sea caused mainly by the Moon's gravity pulling on the oceans,
with a smaller contribution from the Sun. Most coasts see two high tides and two low tides about every 24 hours
and 50 minutes. When Sun and Moon line up at new and full moon, spring tides have the largest range; at the
quarter moons, neap tides have the smallest."""
    ),
    "photosynthesis": """Photosynthesis is how plants, algae and some bacteria store the energy of light as sugar.
Chlorophyll in the chloroplasts absorbs light; the light-dependent reactions split water, releasing oxygen and
producing ATP and NADPH. The Calvin cycle then uses them to fix carbon dioxide from the air into glucose.""",
    "black_holes": """A black hole is a region where gravity is so strong that nothing, not even light, escapes once it
crosses the event horizon. For a non-rotating black hole, the horizon lies at the Schwarzschild radius, about
three kilometres per solar mass. Quantum effects make black holes emit faint Hawking radiation, so they slowly
evaporate over immense times.""",
    "roman_aqueducts": """Roman aqueducts carried water into cities by gravity alone, along channels with a very gentle,
steady slope. The Pont du Gard bridge in southern France carried the Nîmes aqueduct across a river valley; the
whole 50 kilometre route drops only about 12 metres, an average gradient of roughly 1 in 4800. Water ended in
distribution tanks that fed fountains, baths and private houses.""",
    "printing_press": """Johannes Gutenberg developed printing with movable metal type in Mainz around 1440. His press,
adapted from wine presses, combined cast type, oil-based ink and a screw press, and produced the Gutenberg Bible
around 1455. Within fifty years print shops had spread to over two hundred European cities, making books far
cheaper.""",
    "router_zx400": """# Lumen ZX-400 router: quick reference

## Reset
To restore factory settings, hold the recessed reset button for 10 seconds until all lights flash. The default
admin password is printed on the label underneath.

## Status light
Solid green: online. Blinking amber: a firmware update is being installed, do not unplug. Red: no internet
connection from the provider.""",
    "vacuum_kestrel": """Kestrel K9 robot vacuum troubleshooting. Error code E17 means the main brush roll is jammed:
turn the vacuum over, release the brush guard, cut away tangled hair and clean the brush ends. Error E22 means
the dust bin is missing. Replace the HEPA filter every three months and the side brushes every six months.""",
    "tax_qx12": """Form QX-12 is the quarterly income declaration for freelancers in the Republic of Norland. It is due
15 days after the end of each quarter and is filed through the revenue office's portal. Declarations filed late
incur a fee of 2 percent of the tax due per started month. Freelancers earning under 12,000 crowns a year may
file once a year instead.""",
    "acme_vacation": (
        """Acme Corp vacation policy: full-time employees receive 25 days of paid vacation per calendar year.
Up to 5 unused days may be carried over into the next year, but carried-over days expire on 31 March. Requests go
through the Harbor HR portal at least two weeks in advance and are approved by your manager."""
    ),
    "acme_expenses": (
        """Acme Corp travel and expense policy: meals on business trips are reimbursed up to 40 euros per day.
Submit every receipt in the Ledgerly expense tool within 30 days of the trip; claims without receipts are not paid.
Economy class is the default for flights under six hours, and hotels should cost no more than the city rate table."""
    ),
    "acme_onboarding": """Acme Corp IT onboarding: new employees receive their laptop by courier before their first day.
On first boot, enrol the laptop in device management with your company account, then install Vaultkeeper, the
company password manager, and turn on two-factor authentication for email. IT support is reachable through the
#help-it channel.""",
    "chess_sicilian": (
        """The Sicilian Defence, 1.e4 c5, is Black's most popular and combative answer to White's king pawn
opening. Instead of mirroring with 1...e5, Black fights for the centre from the side, creating an unbalanced
position with chances for both players. Main lines include the Najdorf and the Dragon variations."""
    ),
    "guitar_tuning": (
        """Standard guitar tuning from the lowest string to the highest is E A D G B E. In drop D tuning the
low E string is tuned down a whole step to D, which allows power chords to be played with a single finger and gives
a heavier sound. Tune with a clip-on tuner or by matching the fifth fret of each string to the next open string."""
    ),
    "knot_bowline": """The bowline ties a fixed loop at the end of a rope that will not slip or jam and is easy to untie
even after heavy loading. Make a small overhand loop, pass the end up through it, around the standing part and back
down: the rabbit comes out of the hole, runs around the tree and goes back down the hole. Sailors use it for
mooring lines.""",
    "bees_dance": (
        """Honeybees tell their hive mates where food is with the waggle dance. A forager runs a figure-of-eight
on the comb; the angle of the straight waggle run relative to vertical shows the direction of the flowers relative
to the sun, and the duration of the waggle encodes the distance."""
    ),
    "coral_bleaching": (
        """Corals live in partnership with tiny algae called zooxanthellae that live in their tissues, give
them their colour and supply most of their food. When the sea stays a degree or two warmer than usual for weeks,
stressed corals expel the algae and turn white. Bleached corals can recover if temperatures drop quickly, otherwise
they starve."""
    ),
    "compound_interest": """Compound interest means earning interest on previously earned interest, so savings grow
exponentially. The rule of 72 estimates the years needed to double money: divide 72 by the annual interest rate in
percent. At 6 percent a year, savings double in about 12 years.""",
    "inflation": (
        """Inflation is the general rise of prices, usually measured with a consumer price index. When inflation
runs above target, a central bank raises its policy interest rate: borrowing becomes more expensive, spending and
investment slow down and price growth eases. Lowering rates does the opposite when the economy is weak."""
    ),
    "recycling_plastics": (
        """The number inside the recycling triangle is a resin identification code. Codes 1 (PET, drink
bottles) and 2 (HDPE, milk jugs and detergent bottles) are widely recycled. Code 5 (polypropylene) is accepted in
more and more places, while code 6 (polystyrene foam) and code 7 (mixed plastics) are rarely recycled."""
    ),
    "vaccines_mrna": (
        """mRNA vaccines deliver a short strand of messenger RNA wrapped in lipid nanoparticles. Cells read the
instructions and make a harmless piece of the virus's spike protein, which trains the immune system to recognise the
real virus. The mRNA breaks down within days. Early mRNA vaccines needed ultra-cold storage at around minus 70
degrees Celsius."""
    ),
    "password_security": (
        """Long passphrases made of several random words are both easier to remember and harder to crack
than short complex passwords. Never reuse a password across sites, because one breach then unlocks every account.
A password manager generates and stores unique passwords, and two-factor authentication stops most account
takeovers even when a password leaks."""
    ),
    "knife_sharpening": (
        """To sharpen a kitchen knife on a whetstone, soak the stone, then hold the blade at a constant angle
of 15 to 20 degrees and push it across the 1000 grit side until a small burr forms along the whole edge. Repeat on
the other side, then polish on the 6000 grit side and strop away the burr. Hone regularly between sharpenings."""
    ),
    "cast_iron": """A cast iron pan is protected by its seasoning, thin layers of oil baked into a hard polymer. Wash it
briefly with hot water and a little soap, never soak it or put it in the dishwasher, dry it on the stove and wipe in
a few drops of oil while it is warm. Cooking fatty foods builds the seasoning further.""",
    "router_zx500": """# Lumen ZX-500 router: quick reference

## Reset
To restore factory settings, hold the reset button on the back for 5 seconds; the power light turns white while
the router restarts. The admin password is the one you chose in the setup app.

## Status light
Solid blue: online. Blinking amber: the router has lost the signal from the satellite dish; check the coaxial
cable. Purple: guest network enabled.""",
    "vacuum_kestrel_k7": """Kestrel K7 robot vacuum troubleshooting. Error code E05 means a cliff sensor is dirty:
wipe the four sensors under the bumper with a dry cloth. Error code E31 means the battery is too hot to charge;
let it cool. Replace the filter every two months and the side brush every four months.""",
    "tax_qx14": """Form QX-14 is the annual corporate tax return in the Republic of Norland. Companies file it within
six months of the end of their financial year. Late returns are charged a flat penalty of 500 crowns plus interest,
and small companies may ask for a three-month extension through the revenue office's portal.""",
    "tax_qx20": """Form QX-20 is the monthly value added tax return in the Republic of Norland for businesses whose
turnover exceeds 50,000 crowns. It is due on the 20th of the following month. Overpaid tax is refunded within
thirty days or can be carried forward to the next return.""",
    "acme_remote_work": """Acme Corp remote work policy: employees may work from home up to three days a week after
their probation period. Register your home office in the Harbor HR portal and agree your office days with your team.
Working from another country for more than 20 days a year needs approval from HR because of tax rules.""",
    "acme_parental_leave": """Acme Corp parental leave: every new parent receives 16 weeks of fully paid leave, which
can be split into up to three blocks within the child's first two years. Notify HR at least eight weeks before the
leave starts. Your vacation days keep accruing during parental leave.""",
    "python_typeerror": """In Python, a TypeError is raised when an operation gets a value of the wrong type, for
example adding a string to an integer or calling an object that is not callable. Convert values explicitly with
int() or str(), and read the last line of the traceback, which names the operation and the types involved.""",
    "git_cherry_pick": """`git cherry-pick <commit>` applies the changes of one existing commit onto the current
branch as a new commit. It is handy for moving a bug fix from a feature branch to a release branch without
merging everything else. If the change conflicts, resolve the files and run `git cherry-pick --continue`.""",
    "pour_over": """Pour-over coffee is brewed by slowly pouring hot water at about 94 degrees over medium-fine
grounds in a paper filter. Use about 15 grams of coffee to 250 grams of water, let the grounds bloom for 30 seconds
and finish pouring by three minutes. The paper traps oils, giving a clean, bright cup.""",
    "bike_brakes": """Disc brake pads on a bicycle should be replaced when the friction material is thinner than
about 1.5 millimetres or when the brakes squeal and lose power after contamination with oil. Remove the wheel, pull
out the retaining pin, slide in new pads, then bed them in with a series of firm stops from moderate speed.""",
}

# (query, relevant document ids): paraphrases sharing few words with their answer
PARAPHRASES: list[tuple[str, tuple[str, ...]]] = [
    ("how long should an espresso shot take to pull", ("espresso",)),
    ("coffee that is steeped overnight without hot water", ("cold_brew",)),
    ("my bicycle drivetrain is grimy and squeaks", ("bike_chain",)),
    ("repairing a punctured inner tube", ("bike_puncture",)),
    ("why are the leaves of my potted plant going yellow", ("houseplant_overwatering",)),
    ("target-like brown rings on the leaves of my tomato plants", ("tomato_blight",)),
    ("selling surplus electricity from rooftop panels back to the utility", ("solar_panels",)),
    ("can it heat a house in freezing winters without a boiler", ("heat_pump",)),
    ("error when looking up a dictionary entry that is not there", ("python_keyerror",)),
    ("keep the packages of each python project separate", ("python_venv",)),
    ("merge several commits into a single one before a pull request", ("git_rebase",)),
    ("make container builds faster by reusing cached steps", ("docker_layers",)),
    ("the API says I am sending requests too often", ("http_429",)),
    ("how often must free HTTPS certificates be renewed", ("tls_certificates",)),
    ("tips for falling asleep faster at night", ("sleep_hygiene",)),
    ("reducing running volume in the weeks before race day", ("marathon_training",)),
    ("what to do right after scalding my hand with boiling water", ("first_aid_burns",)),
    ("why does the ocean come in and go out twice a day", ("tides",)),
    ("how do leaves turn light into food", ("photosynthesis",)),
    ("the point of no return around a collapsed star", ("black_holes",)),
    ("how did ancient Rome supply its cities with water", ("roman_aqueducts",)),
    ("who started printing books with metal letters in Europe", ("printing_press",)),
    ("how do insects show the colony where nectar is", ("bees_dance",)),
    ("why do reefs lose their colour when the water heats up", ("coral_bleaching",)),
    ("how many years until my savings double", ("compound_interest",)),
    ("why would a central bank make loans more expensive when prices climb", ("inflation",)),
    ("which kinds of plastic packaging can go in the recycling bin", ("recycling_plastics",)),
    ("how do messenger RNA shots teach the immune system", ("vaccines_mrna",)),
    ("how to stop my accounts from being hacked", ("password_security",)),
    ("what angle should the blade be on a sharpening stone", ("knife_sharpening",)),
    ("looking after an iron frying pan so it does not rust", ("cast_iron",)),
    ("a sailor's loop that does not slip under load", ("knot_bowline",)),
    ("a sharp counterattacking reply for black against 1.e4", ("chess_sicilian",)),
    ("how many days off do I get each year at Acme", ("acme_vacation",)),
    ("daily food allowance when travelling for work", ("acme_expenses",)),
    ("put the router back to factory settings", ("router_zx400",)),
    ("the robot vacuum brush is stuck with hair", ("vacuum_kestrel",)),
    ("how many days a week can I work from home", ("acme_remote_work",)),
    ("time off after having a baby at Acme", ("acme_parental_leave",)),
    ("adding a number to text gives an error in python", ("python_typeerror",)),
    ("copy a single fix from one branch to another", ("git_cherry_pick",)),
    ("brewing coffee by hand through a paper filter", ("pour_over",)),
    ("my disc brakes squeal and do not stop well", ("bike_brakes",)),
]
# identifiers, codes and rare names
IDENTIFIERS: list[tuple[str, tuple[str, ...]]] = [
    ("ZX-400 blinking amber", ("router_zx400",)),
    ("ZX-500 blinking amber", ("router_zx500",)),
    ("ZX-500 reset", ("router_zx500",)),
    ("Kestrel E17", ("vacuum_kestrel",)),
    ("Kestrel E05", ("vacuum_kestrel_k7",)),
    ("QX-12 late fee", ("tax_qx12",)),
    ("QX-14 late penalty", ("tax_qx14",)),
    ("QX-20 due date", ("tax_qx20",)),
    ("Harbor portal carry over", ("acme_vacation",)),
    ("Ledgerly receipts 30 days", ("acme_expenses",)),
    ("Vaultkeeper", ("acme_onboarding",)),
    ("Alternaria solani", ("tomato_blight",)),
    ("Pont du Gard gradient", ("roman_aqueducts",)),
    ("Schwarzschild radius", ("black_holes",)),
    ("zooxanthellae", ("coral_bleaching",)),
    ("EADGBE drop D", ("guitar_tuning",)),
    ("git rebase -i HEAD~3", ("git_rebase",)),
    ("Retry-After header", ("http_429",)),
]
QUERIES = PARAPHRASES + IDENTIFIERS
